//! Where a key of the policy file is written, so that checks made after parsing (ranges, order,
//! lints) still point at `file:line:col`.

use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The parsed document, kept only for its spans.
pub struct Locator<'i> {
    root: Option<Spanned<DeValue<'i>>>,
}

impl<'i> Locator<'i> {
    /// From a document already parsed (the policy parser's syntax pass).
    pub fn from_table(table: Spanned<DeTable<'i>>) -> Self {
        let span = table.span();
        Self {
            root: Some(Spanned::new(span, DeValue::Table(table.into_inner()))),
        }
    }

    /// How many entries the array at `path` has (0 when it is not written).
    pub fn len(&self, path: &str) -> usize {
        let Some(mut node) = self.root.as_ref() else {
            return 0;
        };
        for segment in path.split('.') {
            match node.get_ref().get(segment) {
                Some(value) => node = value,
                None => return 0,
            }
        }
        node.get_ref().as_array().map_or(0, |a| a.len())
    }

    /// The span of the value at a dotted path such as `"admission.slots"` or `"class.2.max_share"`
    /// (numbers index arrays of tables). When the key itself is not written (a default is in
    /// force), the span of the nearest enclosing table or array that is; `None` when not even the
    /// section is.
    pub fn span(&self, path: &str) -> Option<Range<usize>> {
        let mut node = self.root.as_ref()?;
        let mut found = None;
        for segment in path.split('.') {
            let next = match segment.parse::<usize>() {
                Ok(index) => node.get_ref().get(index),
                Err(_) => node.get_ref().get(segment),
            };
            match next {
                Some(value) => {
                    node = value;
                    found = Some(value.span());
                }
                None => break,
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::line_col;

    #[test]
    fn finds_keys_tables_and_array_entries() {
        let text = "[admission]\nslots = 0\n\n[[class]]\nname = \"a\"\n[[class]]\nname = \"b\"\nmax_share = 2.0\n";
        let at = |path: &str| {
            Locator::from_table(DeTable::parse(text).unwrap())
                .span(path)
                .map(|s| line_col(text, s.start))
        };
        assert_eq!(at("admission.slots"), Some((2, 9)));
        assert_eq!(at("class.1.max_share"), Some((8, 13)));
        assert_eq!(at("class.0.name"), Some((5, 8)));
        // Not written: the nearest enclosing entry.
        assert_eq!(at("class.0.max_share").map(|p| p.0), Some(4));
        assert_eq!(at("session.idle_timeout"), None);
    }
}
