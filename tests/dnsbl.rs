//! DNS list scoring against a real DNS server on loopback (the loadtest crate's, on hickory-server):
//! listings and their weights, allow lists, IPv6 and IPv4-mapped clients, error answers, a list that
//! never answers, the self-test, single flight; TTL expiry with paused time through the trait seam.

mod common;

use mxgate::admission::{assess, lists_not_counted};
use mxgate::policy::Policy;
use mxgate::reputation::dnsbl::lists::{DnsLists, Outcome};
use mxgate::reputation::dnsbl::lookup::{Answer, DnsLookup, LookupFuture};
use mxgate::server::dns_lists;
use mxgate_loadtest::dnsbl::{demo_zones, Behaviour, DnsblServer, Zone};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The embedded default policy (ZEN and DNSWL entries, four classes) asking `resolver`.
fn default_policy(resolver: SocketAddr, budget: &str) -> Policy {
    let text = mxgate::policy::EMBEDDED_DEFAULT
        .replace(
            "# resolver = \"127.0.0.1:53\"",
            &format!("resolver = \"{resolver}\""),
        )
        .replace("budget = \"500ms\"", &format!("budget = \"{budget}\""));
    Policy::parse("default+resolver", &text, None).unwrap_or_else(|e| panic!("{e}"))
}

async fn class_of(policy: &Policy, lists: &Arc<DnsLists>, ip: &str) -> (String, i32, Vec<String>) {
    let verdict = assess(policy, lists, ip.parse().unwrap()).await;
    let names = verdict
        .terms
        .iter()
        .map(|t| t.name.clone().unwrap_or_default())
        .collect();
    (
        policy.class(verdict.decision.class()).name.clone(),
        verdict.score,
        names,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_weights_and_classes() {
    let dns = DnsblServer::start(demo_zones()).await.unwrap();
    let policy = default_policy(dns.addr(), "2s");
    let lists = dns_lists(&policy).await.unwrap();
    assert!(lists.is_usable("zen.spamhaus.org") && lists.is_usable("list.dnswl.org"));
    let table = [
        ("127.0.1.2", "blocked", 10, vec!["SBL"]),
        ("127.0.1.4", "suspect", 5, vec!["XBL"]),
        ("127.0.1.10", "suspect", 4, vec!["PBL"]),
        ("127.0.1.14", "suspect", 9, vec!["XBL", "PBL"]),
        ("127.0.5.5", "neutral", 0, vec![]),
        ("127.0.2.1", "trusted", -5, vec!["DNSWL"]),
        // IPv4-mapped IPv6 is looked up as IPv4.
        ("::ffff:127.0.1.2", "blocked", 10, vec!["SBL"]),
        // IPv6: 32 reversed nibbles.
        ("2001:db8:bad::25", "blocked", 10, vec!["SBL"]),
        ("2001:db8:900d::25", "neutral", 0, vec![]),
    ];
    for (ip, class, score, names) in table {
        let got = class_of(&policy, &lists, ip).await;
        let names: Vec<String> = names.into_iter().map(String::from).collect();
        assert_eq!(got, (class.to_owned(), score, names), "{ip}");
    }
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postscreen_sites_say_the_same_as_tables() {
    let dns = DnsblServer::start(demo_zones()).await.unwrap();
    let text = format!(
        "[backend]\naddress = \"127.0.0.1:25\"\n[dns]\nresolver = \"{}\"\nbudget = \"2s\"\n\
         sites = [\"zen.spamhaus.org=127.0.0.[10;11]*4\", \"list.dnswl.org=127.0.[0..255].[2..3]*-5\"]\n\
         [[class]]\nname = \"good\"\nmax_score = -1\n[[class]]\nname = \"ok\"\nmax_score = 3\n[[class]]\nname = \"bad\"\n",
        dns.addr()
    );
    let policy = Policy::parse("sites", &text, None).unwrap_or_else(|e| panic!("{e}"));
    let lists = dns_lists(&policy).await.unwrap();
    assert_eq!(class_of(&policy, &lists, "127.0.1.10").await.0, "bad");
    assert_eq!(
        class_of(&policy, &lists, "127.0.1.2").await.0,
        "ok",
        "SBL code is outside the PBL filter"
    );
    assert_eq!(class_of(&policy, &lists, "127.0.2.2").await.0, "good");
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_not_listings() {
    // A list that answers 127.255.255.254 (Spamhaus: query through a public resolver) for a client.
    let zen = Zone::parse(
        "127.0.0.2\n127.0.1.2 :127.0.0.2\n127.0.7.7 :127.255.255.254\n127.0.7.8 :10.0.0.1\n",
    )
    .unwrap();
    let dns = DnsblServer::start(vec![
        ("zen.spamhaus.org", zen),
        ("list.dnswl.org", demo_zones().remove(1).1),
    ])
    .await
    .unwrap();
    let policy = default_policy(dns.addr(), "2s");
    let lists = dns_lists(&policy).await.unwrap();
    assert!(lists.is_usable("zen.spamhaus.org"));
    let verdict = assess(&policy, &lists, "127.0.7.7".parse().unwrap()).await;
    assert_eq!(verdict.score, 0);
    assert!(
        verdict
            .dns
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Error(_))),
        "{:?}",
        verdict.dns
    );
    // The list is out of scoring until its self-test passes again.
    assert!(!lists.is_usable("zen.spamhaus.org"));
    let later = assess(&policy, &lists, "127.0.1.2".parse().unwrap()).await;
    assert_eq!(later.score, 0, "an unusable list still scored");
    assert!(later.dns.iter().any(|r| r.outcome == Outcome::Unusable));
    assert!(lists.self_test().await.is_empty());
    assert_eq!(
        assess(&policy, &lists, "127.0.1.2".parse().unwrap())
            .await
            .score,
        10
    );
    // An answer outside 127.0.0.0/8 is an error too.
    let odd = assess(&policy, &lists, "127.0.7.8".parse().unwrap()).await;
    assert_eq!(odd.score, 0);
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_never_answers_costs_at_most_the_budget() {
    let dns = DnsblServer::start(demo_zones()).await.unwrap();
    let policy = default_policy(dns.addr(), "300ms");
    let lists = dns_lists(&policy).await.unwrap();
    dns.set_behaviour("zen.spamhaus.org", Behaviour::Silent);
    let started = std::time::Instant::now();
    let verdict = assess(&policy, &lists, "127.0.1.2".parse().unwrap()).await;
    let took = started.elapsed();
    assert!(verdict
        .dns
        .iter()
        .any(|r| &*r.zone == "zen.spamhaus.org" && r.outcome == Outcome::Late));
    // The decision log line says which list did not count, and why.
    assert_eq!(lists_not_counted(&verdict), "zen.spamhaus.org:late");
    assert_eq!(
        policy.class(verdict.decision.class()).name,
        "neutral",
        "a silent list counts as not listed"
    );
    assert!(
        took >= Duration::from_millis(300),
        "returned before the budget: {took:?}"
    );
    assert!(
        took < Duration::from_millis(300 + 700),
        "budget of 300 ms overrun: {took:?}"
    );
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_failing_its_self_test_is_left_out() {
    // No RFC 5782 test entry: 127.0.0.2 is not listed.
    let broken = Zone::parse("127.0.1.2 :127.0.0.2\n").unwrap();
    let dns = DnsblServer::start(vec![
        ("zen.spamhaus.org", broken),
        ("list.dnswl.org", demo_zones().remove(1).1),
    ])
    .await
    .unwrap();
    let policy = default_policy(dns.addr(), "2s");
    let lists = dns_lists(&policy).await.unwrap();
    assert!(!lists.is_usable("zen.spamhaus.org"));
    assert!(lists.is_usable("list.dnswl.org"));
    let verdict = assess(&policy, &lists, "127.0.1.2".parse().unwrap()).await;
    assert_eq!(verdict.score, 0);
    assert!(verdict
        .dns
        .iter()
        .any(|r| &*r.zone == "zen.spamhaus.org" && r.outcome == Outcome::Unusable));
    assert_eq!(lists_not_counted(&verdict), "zen.spamhaus.org:unusable");
    // SERVFAIL fails the self-test too.
    dns.set_behaviour("list.dnswl.org", Behaviour::ServFail);
    assert_eq!(lists.self_test().await.len(), 2);
    dns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_one_query_per_list_for_a_thousand_connections() {
    let dns = DnsblServer::start(demo_zones()).await.unwrap();
    let policy = Arc::new(default_policy(dns.addr(), "2s"));
    let lists = dns_lists(&policy).await.unwrap();
    let before = dns.queries();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (policy, lists) = (policy.clone(), lists.clone());
        tasks.spawn(async move {
            assess(&policy, &lists, "127.0.1.10".parse().unwrap())
                .await
                .score
        });
    }
    while let Some(score) = tasks.join_next().await {
        assert_eq!(score.unwrap(), 4);
    }
    assert_eq!(dns.queries() - before, 2, "one query per list (zen, dnswl)");
    dns.stop().await;
}

/// A lookup that answers "listed, TTL 120 s" and counts how often it is asked.
struct Counting(AtomicUsize);

impl DnsLookup for Counting {
    fn lookup_a(&self, name: String, _deadline: Duration) -> LookupFuture<'_> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if name.starts_with("1.0.0.127.") {
                Answer::NotListed { ttl: None }
            } else {
                Answer::Records {
                    codes: vec!["127.0.0.2".parse().unwrap()],
                    ttl: Duration::from_secs(120),
                }
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn cached_answers_expire_with_their_ttl() {
    let policy = default_policy("127.0.0.1:9".parse().unwrap(), "500ms");
    let counting = Arc::new(Counting(AtomicUsize::new(0)));
    let lists = DnsLists::new(policy.dns.lists.clone(), counting.clone());
    assert!(lists.self_test().await.is_empty());
    let asked = || counting.0.load(Ordering::SeqCst);
    let after_self_test = asked();
    let ip = "192.0.2.1".parse().unwrap();
    let first = assess(&policy, &lists, ip).await;
    assert_eq!(asked() - after_self_test, 2);
    assert!(first.terms.iter().all(|t| !t.cached));
    tokio::time::advance(Duration::from_secs(119)).await;
    let second = assess(&policy, &lists, ip).await;
    assert_eq!(asked() - after_self_test, 2, "asked again within the TTL");
    assert!(second
        .terms
        .iter()
        .all(|t| t.cached && t.ttl_left <= Duration::from_secs(1)));
    tokio::time::advance(Duration::from_secs(2)).await;
    assess(&policy, &lists, ip).await;
    assert_eq!(
        asked() - after_self_test,
        4,
        "not asked again after the TTL"
    );
}
