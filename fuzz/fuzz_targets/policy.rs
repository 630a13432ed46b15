//! Fuzzes the policy parser with arbitrary text: a broken policy file must give errors that point at
//! `file:line:col`, never a panic, and a policy that parses must render its warnings.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mxgate::policy::{Policy, PolicyIssue};

/// An issue's place lies inside the text (line 0: no single place).
fn check_place(issue: &PolicyIssue, text: &str) {
    let lines = text.split('\n').count();
    assert!(
        issue.line <= lines,
        "line {} of {lines}: {issue}",
        issue.line
    );
    assert!(
        (issue.line == 0) == (issue.col == 0),
        "a line without a column or the reverse: {issue}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse("fuzz.toml", text, None) {
        Ok(policy) => {
            for warning in &policy.warnings {
                check_place(warning, text);
                let _ = warning.to_string();
            }
        }
        Err(error) => {
            assert!(!error.issues.is_empty(), "an error with no issue");
            for issue in &error.issues {
                check_place(issue, text);
            }
            let shown = error.to_string();
            assert!(
                shown.contains("fuzz.toml"),
                "an error that names no file: {shown}"
            );
        }
    }
});
