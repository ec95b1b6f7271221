//! Standard `process_*` metrics from `/proc/self`, read at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reports CPU time, memory, open file descriptors and start time.
#[derive(Debug)]
pub struct ProcessCollector {
    start_time: f64,
}

// === impl ProcessCollector ===

impl ProcessCollector {
    pub fn new() -> Self {
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Self { start_time }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// Clock ticks per second; Linux reports 100 on every common platform.
const TICKS: f64 = 100.0;
const PAGE: f64 = 4096.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the parenthesised command name.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime (14) and stime (15) are fields 11 and 12 after the name.
        let cpu = (field(11) + field(12)) / TICKS;
        let vsize = field(20);
        let rss = field(21) * PAGE;
        let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0) as f64;

        let c = ConstCounter::new(cpu);
        c.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            c.metric_type(),
        )?)?;
        for (name, help, value) in [
            ("process_resident_memory_bytes", "Resident memory size in bytes", rss),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", vsize),
            ("process_open_fds", "Number of open file descriptors", fds),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                self.start_time,
            ),
        ] {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
