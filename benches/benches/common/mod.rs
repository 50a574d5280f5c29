//! What the criterion benches share.

use std::time::Duration;

use criterion::Criterion;

/// Short warm-up and measurement, 20 samples: every group finishes in seconds, and the
/// families × sizes of each bench run in a few minutes on two cores.
pub(crate) fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}
