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
    assert!(loaded >= 4);
    // Each shipped policy decides as its comments say.
    let load = |name: &str| Policy::load(&root.join("policies").join(name)).unwrap();
    let strict = load("strict.toml");
    let class = |p: &Policy, score: i32| p.class(p.class_for_score(score)).name.clone();
    assert_eq!(class(&strict, 4), "suspect", "strict: PBL defers");
    assert_eq!(class(&strict, 7), "blocked", "strict: XBL rejects");
    assert!(strict.pregreet.is_some());
    let lenient = load("lenient.toml");
    assert_eq!(
        class(&lenient, 2),
        "neutral",
        "lenient: PBL only is neutral"
    );
    assert_eq!(class(&lenient, 4), "suspect");
    assert_eq!(
        lenient.class(lenient.class_for_score(4)).action,
        mxgate::policy::Action::Admit,
        "lenient: suspects are admitted, capped"
    );
    assert_eq!(class(&lenient, 10), "blocked");
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
            "connect_timeout = \"2s\"",
            "connect_timeout = \"2s\"\n[backend.tls]\nmode = \"ssl\"\nca = \"/x.pem\"",
            "test:11:8: unknown variant `ssl`, expected `starttls` or `implicit`",
        ),
        (
            "connect_timeout = \"2s\"",
            "connect_timeout = \"2s\"\n[backend.tls]\nmode = \"starttls\"\nca = \"/nonexistent/ca.pem\"",
            "test:12:6: cannot read backend.tls.ca /nonexistent/ca.pem",
        ),
        (
            "connect_timeout = \"2s\"",
            "connect_timeout = \"2s\"\n[backend.tls]\nmode = \"implicit\"",
            "test:10:1: missing field `ca`",
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
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[[dns.list]]\nzone = \"zen.spamhaus.org\"\ncodes = \"128.0.0.2\"",
            "test:18:9: return-code filter \"128.0.0.2\" can never match",
        ),
        // Unknown keys come with the closest known one.
        (
            "name = \"neutral\"",
            "name = \"neutral\"\nmax_shares = 0.5",
            "test:16:1: unknown field `max_shares`, expected one of",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[admission]\nslot = 5",
            "test:17:1: unknown field `slot`",
        ),
        // Wrong types.
        (
            "name = \"neutral\"",
            "name = \"neutral\"\nconnections_per_ip = \"5\"",
            "test:16:22: invalid type: string \"5\", expected usize; write the number without quotes",
        ),
        (
            "connect_timeout = \"2s\"",
            "connect_timeout = 2",
            "test:9:19: invalid type: integer `2`, expected a string; quote it",
        ),
        // Shares and thresholds outside 0..1.
        (
            "name = \"neutral\"",
            "name = \"neutral\"\nmax_share = 1.5",
            "test:16:13: max_share = 1.5 must be between 0 and 1",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[admission]\nstress_threshold = -0.1",
            "test:17:20: stress_threshold must be between 0 and 1",
        ),
        // Values checked after parsing still point at their key.
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[admission]\nslots = 0",
            "test:17:9: admission.slots must be at least 1",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[admission]\nprefix_v4 = 33",
            "test:17:13: prefix_v4 = 33 must be at most 32",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\nrecipient_rate = \"6/fortnight\"",
            "test:16:18: ",
        ),
        (
            "name = \"neutral\"",
            "name = \"neutral\"\n[dns]\nbudget = \"0s\"",
            "test:17:10: dns.budget = 0ns must be between 1ms and 30s",
        ),
        (
            "[session]\n",
            "[session]\nmax_command_line = 100\n",
            "test:12:20: session.max_command_line = 100 is outside 512..=65536",
        ),
        (
            "hostname = \"mx.test\"",
            "hostname = \"mx test\"",
            "test:3:12: server.hostname \"mx test\" must be one word",
        ),
        // A syntax error.
        (
            "hostname = \"mx.test\"",
            "hostname = \"mx.test",
            "test:3:20: invalid basic string",
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

    // `check --policy FILE`, as `run` and `explain` spell it, checks the same way; naming no
    // file, or two, is a usage error (exit 2), not a check that passes.
    let flagged = Command::new(bin)
        .args(["check", "--policy", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(flagged.status.code(), Some(1));
    assert_eq!(flagged.stderr, out.stderr);
    let neither = Command::new(bin).args(["check"]).output().unwrap();
    assert_eq!(neither.status.code(), Some(2));
    let both = Command::new(bin)
        .args(["check", default, "--policy", default])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn every_syntax_error_is_listed() {
    let text = "[server]\nhostname = \"a\n[backend]\naddress = \"127.0.0.1:25\"\nx = = 1\n";
    let err = Policy::parse("test", text, None).unwrap_err();
    let places: Vec<(usize, usize)> = err.issues.iter().map(|i| (i.line, i.col)).collect();
    assert!(places.contains(&(2, 14)), "{err}");
    assert!(places.iter().any(|p| p.0 == 5), "{err}");
    assert!(
        places.windows(2).all(|w| w[0] <= w[1]),
        "in file order: {err}"
    );
}

#[test]
fn every_value_error_is_listed_in_file_order() {
    let text = "[backend]\naddress = \"127.0.0.1:25\"\n[admission]\nslots = 0\n[[class]]\nname = \"a\"\nmax_share = 2.0\nrecipient_rate = \"lots\"\n";
    let err = Policy::parse("test", text, None).unwrap_err();
    let places: Vec<(usize, usize)> = err.issues.iter().map(|i| (i.line, i.col)).collect();
    assert_eq!(places, [(4, 9), (7, 13), (8, 18)], "{err}");
}

/// Each lint, triggered by a minimal policy: (addition to a valid policy, expected warning start).
#[test]
fn each_lint_has_a_trigger() {
    let base = "[backend]\naddress = \"127.0.0.1:25\"\n";
    let table: &[(&str, &str)] = &[
        (
            "[[rule]]\ncidr = \"10.0.0.0/8\"\naction = \"deny\"\n[[rule]]\ncidr = \"10.1.0.0/16\"\naction = \"allow\"\n[[class]]\nname = \"a\"\nmax_score = 0\n[[class]]\nname = \"b\"\n",
            "test:7:8: warning: rule #2 (10.1.0.0/16) can never match: rule #1 (10.0.0.0/8)",
        ),
        (
            "[[class]]\nname = \"clean\"\nmax_score = 0\n[[class]]\nname = \"listed\"\n",
            "test:7:8: warning: class \"listed\" can never be chosen: it takes scores above 0",
        ),
        (
            "[dns]\nsites = [\"list.dnswl.org=127.0.[0..255].[1..3]*3\"]\n[[class]]\nname = \"a\"\nmax_score = 0\n[[class]]\nname = \"b\"\n",
            "test:4:10: warning: list.dnswl.org looks like an allow list but has weight +3",
        ),
        (
            "[[dns.list]]\nzone = \"zen.spamhaus.org\"\nweight = -2\n[[class]]\nname = \"a\"\nmax_score = -1\n[[class]]\nname = \"b\"\n",
            "test:5:10: warning: zen.spamhaus.org looks like a block list but has weight -2",
        ),
        (
            "[server]\nadmin = \"0.0.0.0:9025\"\n[[class]]\nname = \"a\"\n",
            "test:4:9: warning: the admin listener 0.0.0.0:9025 is not on a loopback address and has no admin_token",
        ),
        (
            "[[class]]\nname = \"good\"\nmax_score = 0\nmax_share = 0.5\n[[dns.list]]\nzone = \"bl.example\"\n[[class]]\nname = \"bad\"\nmax_share = 0.9\n",
            "test:6:13: warning: class \"good\" has max_share 0.5 below the worse class \"bad\"'s 0.9",
        ),
    ];
    for (addition, expected) in table {
        let text = format!("{base}{addition}");
        let policy = Policy::parse("test", &text, None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let warnings: Vec<String> = policy.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warnings.iter().any(|w| w.starts_with(expected)),
            "for\n{text}\n  got: {warnings:#?}\n want: {expected}"
        );
    }
    // And none for the base with one class.
    let quiet = Policy::parse("test", &format!("{base}[[class]]\nname = \"a\"\n"), None).unwrap();
    assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
}

#[test]
fn check_strict_refuses_warnings() {
    let bin = env!("CARGO_BIN_EXE_mxgate");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lint.toml");
    std::fs::write(
        &file,
        "[backend]\naddress = \"127.0.0.1:25\"\n[server]\nadmin = \"0.0.0.0:9025\"\n[[class]]\nname = \"a\"\n",
    )
    .unwrap();
    let lenient = Command::new(bin)
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(lenient.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&lenient.stderr).contains("warning: the admin listener"));
    let strict = Command::new(bin)
        .args(["check", "--strict", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));

    // Every shipped policy passes --strict.
    for name in ["default", "strict", "lenient"] {
        let path = format!("{}/policies/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(bin)
            .args(["check", "--strict", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}.toml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
