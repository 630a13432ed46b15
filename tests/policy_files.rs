//! Policy files: the shipped ones load, broken ones are refused with file:line:col, and `mxgate check`
//! says the same on the command line.

mod common;

use mxgate::policy::Policy;
use std::process::Command;

#[test]
fn shipped_policies_load() {
    // The shipped policies and the benchmark's policy.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut loaded = 0;
    for dir in [root.join("policies"), root.join("benches")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
                loaded += 1;
            }
        }
    }
    assert!(loaded >= 2);
    let embedded = Policy::embedded_default();
    assert_eq!(embedded.class(embedded.class_for_score(0)).name, "neutral");
    assert_eq!(embedded.class(embedded.class_for_score(-5)).name, "trusted");
    assert_eq!(embedded.class(embedded.class_for_score(4)).name, "suspect");
    assert_eq!(embedded.class(embedded.class_for_score(10)).name, "blocked");
}

#[test]
fn broken_policies_point_at_the_mistake() {
    let valid = common::policy_text("127.0.0.1:25".parse().unwrap(), "v2", "", "");
    let table: &[(&str, &str, &str)] = &[
        (
            "client_address = \"v2\"",
            "client_address = \"v3\"",
            "test:8:18: unknown variant `v3`",
        ),
        (
            "connect_timeout = \"2s\"",
            "connect_timeout = \"2 parsecs\"",
            "test:9:19: invalid duration \"2 parsecs\"",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[[rule]]\ncidr = \"10.0.0.0/33\"\naction = \"allow\"",
            "test:17:8: invalid IP address syntax",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[[rule]]\ncidr = \"10.0.0.0/8\"\naction = \"allow\"\nclass = \"vip\"",
            "test:19:9: rule class \"vip\" is not a defined class",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[[dns.list]]\nzone = \"zen.spamhaus.org\"\ncodes = \"127.0.0.[10;1x]\"",
            "test:18:9: return-code filter \"127.0.0.[10;1x]\"",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[dns]\nsites = [\"zen.spamhaus.org=127.0.0.2*x\"]",
            "test:17:10: weight \"x\"",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\nmax_score = 2\n[[class]]\nname = \"worse\"\nmax_score = 1\n[[class]]\nname = \"last\"",
            "test:19:13: max_score = 1 does not rise",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[[class]]\nname = \"never\"",
            "test:15:8: class \"neutral\" has no max_score but is not the last class",
        ),
        (
            "hostname = \"mx.test\"",
            "hostname = \"mx.test\"\nlisten_on = 1",
            "test:4:1: unknown field `listen_on`",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\nmessages_per_session = 0",
            "test:16:24: messages_per_session must be at least 1",
        ),
    ];
    for (from, to, expected) in table {
        assert!(valid.contains(from), "fixture lacks {from}");
        let text = valid.replace(from, to);
        let err = Policy::parse("test", &text, None)
            .expect_err(to)
            .to_string();
        assert!(
            err.starts_with(expected),
            "for {to:?}\n  got: {err}\n want: {expected}"
        );
    }
}

#[test]
fn missing_tls_files_are_reported() {
    let mut text = common::policy_text("127.0.0.1:25".parse().unwrap(), "v2", "", "");
    text.push_str(
        "\n[tls]\ncertificate = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    );
    let err = Policy::parse("test", &text, None).unwrap_err().to_string();
    assert!(
        err.contains("cannot read TLS certificate /nonexistent/cert.pem"),
        "{err}"
    );
    assert!(err.starts_with("test:19:15:"), "{err}");
}

#[test]
fn check_command_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_mxgate");
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.toml");
    let ok = Command::new(bin).args(["check", default]).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[backend]\naddress = \"not an address\"\n").unwrap();
    let out = Command::new(bin)
        .args(["check", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:2:11: invalid socket address",
            broken.display()
        )),
        "{stderr}"
    );
}
