// Its own test binary: its counting global allocator measures the heap of the whole process.
//! Request-duration samples must not pile up between scrapes. The Prometheus exporter keeps each
//! recorded histogram sample until an upkeep folds it into the buckets; vakt runs one every
//! second (`metrics::spawn_upkeep`), not only when `/metrics` is scraped. Heap counted exactly by
//! a counting allocator (this test binary's own), not sampled from RSS.

#[path = "../benches/counting_alloc.rs"]
mod counting_alloc;

use std::time::Duration;

use counting_alloc::{Counting, live_bytes};
use metrics_exporter_prometheus::PrometheusBuilder;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SAMPLES: usize = 100_000;
const CHUNK: usize = 1_000;

#[tokio::test(flavor = "current_thread")]
async fn histogram_samples_are_folded_into_buckets_without_a_scrape() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let histogram = metrics::with_local_recorder(
        &recorder,
        || metrics::histogram!("upkeep_test_seconds", "direction" => "inbound"),
    );
    histogram.record(0.002);
    handle.run_upkeep();

    // Without upkeep every sample stays on the heap: the leak this guards against.
    let before = live_bytes();
    for _ in 0..SAMPLES {
        histogram.record(0.002);
    }
    let piled_up = live_bytes() - before;
    assert!(
        piled_up >= (SAMPLES * 8) as isize,
        "{SAMPLES} unfolded samples hold only {piled_up} bytes: the exporter changed, so this \
         test no longer shows anything"
    );

    // Once vakt's upkeep task runs, what had piled up is folded and freed (the exporter frees
    // drained samples through epoch-based reclamation, on a later recording), and the same load
    // stays within a few chunks of samples.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let upkeep = vakt::metrics::spawn_upkeep(handle.clone(), Duration::from_millis(5), stopped);
    let before = live_bytes() - piled_up;
    let mut held = Vec::new();
    for _ in 0..SAMPLES / CHUNK {
        for _ in 0..CHUNK {
            histogram.record(0.002);
        }
        tokio::time::sleep(Duration::from_millis(8)).await;
        held.push(live_bytes() - before);
    }
    let peak = held[1..].iter().copied().max().unwrap();
    assert!(
        peak < (SAMPLES * 8 / 10) as isize,
        "with upkeep every 5 ms the samples of {SAMPLES} requests still held {peak} bytes \
         (after each chunk of {CHUNK}: {held:?})"
    );

    // Folded, not lost: every sample is counted once in the page.
    stop.send(true).unwrap();
    upkeep.await.unwrap();
    let page = handle.render();
    let count = page
        .lines()
        .find(|l| l.starts_with("upkeep_test_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(count, Some(1 + 2 * SAMPLES), "{page}");
    assert!(
        page.contains("upkeep_test_seconds_bucket{direction=\"inbound\",le=\"0.01\"} 200001"),
        "{page}"
    );
}
