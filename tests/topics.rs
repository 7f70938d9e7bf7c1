//! The topics the collector creates, against the real test Kafka: `--topic-min-insync-replicas`
//! is set on them; a `--topic-replication` above the brokers the cluster has does not stop the
//! collector, which keeps taking events, says why once, and retries; existing topics are never
//! altered, only warned about.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use common::*;

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap()
}

/// The brokers the cluster reports, and the names of its topics.
fn cluster(admin: &AdminClient<DefaultClientContext>) -> (usize, HashSet<String>) {
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10)).unwrap();
    (metadata.brokers().len(), metadata.topics().iter().map(|t| t.name().to_string()).collect())
}

/// Creates `topic` with one partition and one replica, and `config`.
async fn create(admin: &AdminClient<DefaultClientContext>, topic: &str, config: &[(&str, &str)]) {
    let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (key, value) in config {
        new = new.set(key, value);
    }
    let created = admin.create_topics([&new], &AdminOptions::new()).await.unwrap();
    assert!(created[0].is_ok(), "creating {topic}: {:?}", created[0]);
}

/// `topic`'s `min.insync.replicas`, and whether the topic has it as its own setting (rather than
/// from the broker's default).
async fn min_insync_replicas(admin: &AdminClient<DefaultClientContext>, topic: &str) -> (String, bool) {
    let described = admin.describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new()).await.unwrap();
    let resource = described[0].as_ref().unwrap_or_else(|code| panic!("describing {topic}: {code}"));
    let entry = resource.get("min.insync.replicas").expect("every topic has a min.insync.replicas");
    (entry.value.clone().unwrap_or_default(), entry.source == ConfigSource::DynamicTopic)
}

/// The lines of `log` that contain `text`.
fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(text)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_above_the_brokers_keeps_the_collector_running_and_says_why_once() {
    let brokers = brokers();
    let admin = admin(&brokers);
    let (broker_count, _) = cluster(&admin);
    let replication = broker_count + 1;
    let topics = Topics::new(&brokers);
    // The raw topic exists already, with one replica; the others do not.
    create(&admin, &topics.raw, &[]).await;
    let positions = format!("{}-positions", topics.raw);
    let mut args = topics.args("run");
    args.extend(["--positions-topic".into(), positions.clone()]);
    args.extend(["--topic-replication".into(), replication.to_string()]);
    let wal = tempfile::tempdir().unwrap();
    let mut c = Collector::start("run", wal.path(), 0, &args);

    // Events are still taken: the WAL holds them until the topics exist.
    let http = reqwest::Client::new();
    let sent = http.post(c.url("/collect")).header("content-type", "application/json");
    assert_eq!(sent.body(event_body("rf-1", "u")).send().await.unwrap().status(), 200);

    // The status page says why nothing is delivered, and both stages keep retrying.
    let why = format!("--topic-replication {replication} exceeds the {broker_count} broker(s) the cluster reports");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = c.status().await;
        let retried = |text| c.log().matches(text).count() >= 3;
        let explained = status["flush"]["last_error"].as_str().is_some_and(|e| e.contains(&why));
        if explained && retried("Cannot create the topics yet") && retried("Cannot create the transform's topics yet") {
            break status;
        }
        assert!(Instant::now() < deadline, "no explanation and retries within 60 s: {status:#}\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(c.child.try_wait().unwrap().is_none(), "the collector keeps running");
    let last_error = status["flush"]["last_error"].as_str().unwrap();
    assert!(last_error.contains(&positions) && last_error.contains("Invalid replication factor"), "{last_error}");
    let errors = status["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["message"].as_str().unwrap().contains(&why)), "{errors:?}");
    // The headline: Kafka answers and refuses, not "unreachable"; its sentence says why.
    assert_eq!(status["state"], "kafka_refusing", "{status:#}");
    assert!(status["state_detail"].as_str().unwrap().contains(&why), "{status:#}");
    let ready = http.get(c.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "with --ack wal the collector still takes events");

    // One warning per topic it cannot create, however often it retried…
    let log = c.log();
    let refused = lines_with(&log, "Kafka refuses to create");
    assert!(refused.iter().all(|l| l.contains("WARN") && l.contains(&why)), "{refused:#?}");
    for topic in [&positions, &topics.transformed, &topics.dead_letter] {
        let naming = refused.iter().filter(|l| l.contains(topic.as_str())).count();
        assert_eq!(naming, 1, "{topic} in {refused:#?}");
    }
    assert!(refused.iter().all(|l| !l.contains(&format!("create {},", topics.raw))), "raw exists: {refused:#?}");
    // …one for the existing topic with fewer replicas, which is left as it is…
    let fewer = format!("Topic {} exists with 1 replica(s), fewer than --topic-replication {replication}", topics.raw);
    assert_eq!(lines_with(&log, &fewer).len(), 1, "{log}");
    // …and Kafka created nothing.
    let (_, existing) = cluster(&admin);
    for topic in [&positions, &topics.transformed, &topics.dead_letter] {
        assert!(!existing.contains(topic.as_str()), "{topic} was created");
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_topics_get_the_min_insync_replicas_given_and_existing_ones_keep_theirs() {
    let brokers = brokers();
    let admin = admin(&brokers);
    let topics = Topics::new(&brokers);
    // The dead-letter topic exists already, with a min.insync.replicas of its own.
    create(&admin, &topics.dead_letter, &[("min.insync.replicas", "2")]).await;
    let mut args = topics.args("run");
    args.extend(["--topic-replication", "1", "--topic-min-insync-replicas", "1"].map(String::from));
    let wal = tempfile::tempdir().unwrap();
    let c = Collector::start("run", wal.path(), 0, &args);

    // The topics work: an event arrives as a row.
    let http = reqwest::Client::new();
    let sent = http.post(c.url("/collect")).header("content-type", "application/json");
    assert_eq!(sent.body(event_body("isr-1", "u")).send().await.unwrap().status(), 200);
    let (b, topic) = (brokers.clone(), topics.transformed.clone());
    let rows = tokio::task::spawn_blocking(move || {
        read_topic(&b, &topic, 1, Duration::from_secs(60), Duration::from_millis(200))
    });
    assert_eq!(rows.await.unwrap().len(), 1);

    for topic in [&topics.raw, &topics.transformed] {
        assert_eq!(min_insync_replicas(&admin, topic).await, ("1".to_string(), true), "{topic}");
    }
    assert_eq!(min_insync_replicas(&admin, &topics.dead_letter).await, ("2".to_string(), true), "not altered");
    let warning =
        format!("Topic {} exists with min.insync.replicas=2, not --topic-min-insync-replicas 1", topics.dead_letter);
    let log = c.log();
    assert_eq!(lines_with(&log, &warning).len(), 1, "{log}");
    drop(c);
}
