//! Counters of the S3 transport, rendered as upstream's `http_*` and `curl_*` stats lines in
//! upstream's order. Two of upstream's lines describe curl internals that have no equivalent
//! here (`curl_handle_reuse_ratio`, `curl_out_of_memory`) and are left out rather than faked.

use crate::client::{ConnectError, TransportError};
use crate::error::HttpError;
use s3b_store::{StatsSection, StatsSource, StatsWriter, StoreError};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// Every counter of the transport.
        #[derive(Default, Debug)]
        pub struct HttpStats {
            $(#[doc = concat!("`", stringify!($field), "`")] pub $field: AtomicU64,)*
        }
        impl HttpStats {
            fn reset(&self) {
                $(self.$field.store(0, Relaxed);)*
            }
        }
    };
}

counters!(
    http_normal_blocks_read,
    http_normal_blocks_written,
    http_zero_blocks_read,
    http_zero_blocks_written,
    http_gets,
    http_puts,
    http_deletes,
    http_heads,
    http_lists,
    get_micros,
    put_micros,
    delete_micros,
    http_unauthorized,
    http_forbidden,
    http_stale,
    http_redirect,
    http_verified,
    http_mismatch,
    http_5xx_error,
    http_4xx_error,
    http_3xx_error,
    http_other_error,
    http_canceled_writes,
    http_num_retries,
    retry_delay_micros,
    curl_timeouts,
    curl_connect_failed,
    curl_host_unknown,
    curl_other_error,
);

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Adds a duration, in microseconds, to a counter.
pub(crate) fn add_time(c: &AtomicU64, d: Duration) {
    c.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
}

impl HttpStats {
    /// Counts a failed attempt in the line upstream counts it in.
    pub(crate) fn count_error(&self, e: &StoreError) {
        if let StoreError::Stale(_) = e {
            return bump(&self.http_stale);
        }
        match HttpError::of(e) {
            Some(HttpError::Unauthorized { .. }) => bump(&self.http_unauthorized),
            Some(HttpError::Forbidden { .. }) => bump(&self.http_forbidden),
            Some(HttpError::Redirect { .. }) => {
                bump(&self.http_redirect);
                bump(&self.http_3xx_error)
            }
            Some(HttpError::Status { status, .. }) => match status {
                500..=599 => bump(&self.http_5xx_error),
                400..=499 => bump(&self.http_4xx_error),
                300..=399 => bump(&self.http_3xx_error),
                _ => bump(&self.http_other_error),
            },
            Some(HttpError::Exchange(TransportError::Timeout { .. })) => bump(&self.curl_timeouts),
            Some(HttpError::Exchange(t @ TransportError::Connect { .. })) if ConnectError::is_unknown_host(t) => {
                bump(&self.curl_host_unknown)
            }
            Some(HttpError::Exchange(TransportError::Connect { .. })) => bump(&self.curl_connect_failed),
            _ => bump(&self.curl_other_error),
        }
    }
}

fn avg(total_micros: &AtomicU64, n: &AtomicU64) -> f64 {
    let n = n.load(Relaxed);
    if n == 0 { 0.0 } else { total_micros.load(Relaxed) as f64 / n as f64 / 1e6 }
}

impl StatsSource for HttpStats {
    fn section(&self) -> StatsSection {
        StatsSection::Http
    }

    fn write_stats(&self, w: &mut StatsWriter) {
        let v = |c: &AtomicU64| c.load(Relaxed);
        w.count("http_normal_blocks_read", v(&self.http_normal_blocks_read));
        w.count("http_normal_blocks_written", v(&self.http_normal_blocks_written));
        w.count("http_zero_blocks_read", v(&self.http_zero_blocks_read));
        w.count("http_zero_blocks_written", v(&self.http_zero_blocks_written));
        w.count("http_gets", v(&self.http_gets));
        w.count("http_puts", v(&self.http_puts));
        w.count("http_deletes", v(&self.http_deletes));
        w.seconds("http_avg_get_time", avg(&self.get_micros, &self.http_gets));
        w.seconds("http_avg_put_time", avg(&self.put_micros, &self.http_puts));
        w.seconds("http_avg_delete_time", avg(&self.delete_micros, &self.http_deletes));
        w.count("http_unauthorized", v(&self.http_unauthorized));
        w.count("http_forbidden", v(&self.http_forbidden));
        w.count("http_stale", v(&self.http_stale));
        w.count("http_redirect", v(&self.http_redirect));
        w.count("http_verified", v(&self.http_verified));
        w.count("http_mismatch", v(&self.http_mismatch));
        w.count("http_5xx_error", v(&self.http_5xx_error));
        w.count("http_4xx_error", v(&self.http_4xx_error));
        w.count("http_3xx_error", v(&self.http_3xx_error));
        w.count("http_other_error", v(&self.http_other_error));
        w.count("http_canceled_writes", v(&self.http_canceled_writes));
        w.count("http_num_retries", v(&self.http_num_retries));
        w.seconds("http_total_retry_delay", v(&self.retry_delay_micros) as f64 / 1e6);
        w.count("curl_timeouts", v(&self.curl_timeouts));
        w.count("curl_connect_failed", v(&self.curl_connect_failed));
        w.count("curl_host_unknown", v(&self.curl_host_unknown));
        w.count("curl_other_error", v(&self.curl_other_error));
    }

    fn reset_stats(&self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_lines_in_order() {
        let s = HttpStats::default();
        bump(&s.http_gets);
        bump(&s.http_gets);
        add_time(&s.get_micros, Duration::from_millis(30));
        let subject = crate::error::Subject { bucket: "b".into(), key: None };
        s.count_error(&HttpError::Status { status: 503, subject, code: None }.into());
        let mut w = StatsWriter::default();
        s.write_stats(&mut w);
        let text = w.into_string();
        let names: Vec<&str> = text.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
        assert_eq!(names[0], "http_normal_blocks_read");
        assert_eq!(names[4], "http_gets");
        assert!(text.contains("http_gets                    2\n"), "{text}");
        assert!(text.contains("http_avg_get_time            0.015 sec\n"), "{text}");
        assert!(text.contains("http_5xx_error               1\n"), "{text}");
        assert_eq!(names.last(), Some(&"curl_other_error"));
        s.reset_stats();
        let mut w = StatsWriter::default();
        s.write_stats(&mut w);
        assert!(w.into_string().contains("http_gets                    0\n"));
    }
}
