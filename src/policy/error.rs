//! Policy errors located as `file:line:col: message`, the form editors and CI logs link to.

use std::fmt;
use std::ops::Range;

/// An error makes a policy unusable; a warning marks one that is valid but probably wrong
/// (`mxgate check --strict` treats warnings as errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    pub origin: String,
    /// 1-based line and column; 0 when the problem has no single place (e.g. a missing section).
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl PolicyIssue {
    /// An error at `span` of `text`.
    pub fn at(origin: &str, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let (line, col) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        Self {
            origin: origin.to_owned(),
            line,
            col,
            severity: Severity::Error,
            message,
        }
    }

    /// A warning at `span` of `text`.
    pub fn warning(origin: &str, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::at(origin, text, span, message)
        }
    }
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        if self.line == 0 {
            write!(f, "{}: {kind}{}", self.origin, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {kind}{}",
                self.origin, self.line, self.col, self.message
            )
        }
    }
}

/// Everything wrong with a policy; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyError {
    pub issues: Vec<PolicyIssue>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let text = "a = 1\nbb = 2\n\nc = \"é\"x";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
        assert_eq!(line_col(text, 13), (3, 1));
        assert_eq!(line_col(text, 14), (4, 1));
        assert_eq!(line_col(text, text.len() - 1), (4, 8));
        assert_eq!(line_col(text, 999), (4, 9));
    }
}
