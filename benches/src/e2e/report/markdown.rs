//! The report as markdown (`report.md`): how the run was made, the terminal's tables and targets,
//! and the chart beside it.

use super::figures::NOISY_PCT;
use super::{family_text, table, targets_text, CHART_FILE};
use crate::e2e::{Options, Results};

/// `report.md` for `results`, measured with `options` by `command`.
pub fn markdown(results: &Results, options: &Options, command: &str) -> String {
    format!(
        "# vpc-bench e2e\n\n`{command}`\n\n{} repetitions, {} s per iperf3 run, per 64-byte flood ({} flows) and per UDP GSO run, {} UDP round trips per latency sample, vswitchd with {} worker(s). Median [min-max] ±spread ((max-min)/median; `~` marks a spread over {NOISY_PCT:.0}%, and targets depending on such a figure are not judged) and ratio to the Linux bridge; tap_bounce is vswitchd's ceiling (its workers only bounce frames between the pods' TAPs).\n\n{}.\n\n```\n{}{}```\n\n![charts]({CHART_FILE})\n",
        options.reps,
        options.seconds,
        options.flows,
        options.round_trips,
        options.workers,
        family_text(options),
        table(results),
        targets_text(results)
    )
}
