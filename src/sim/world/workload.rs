//! The scenario's workload as queue messages: the bulk refresh with its
//! bad bodies spread through it, the priority messages, and the schedule
//! of priority arrivals.

use rand::rngs::StdRng;

use super::{BULK, Event, PRIORITY, World};

impl World {
    pub(super) fn load_workload(&mut self, rng: &mut StdRng) {
        let wl = self.sc.workload.clone();
        for i in 0..wl.priority {
            self.add_origin(
                PRIORITY,
                format!(r#"{{"company_id":"p{i:07}","kind":"update"}}"#),
                rng,
            );
        }
        let bad = wl.not_json + wl.oversize + wl.missing_field + wl.large;
        let total = wl.bulk + bad;
        // Spread the bad bodies through the queue.
        let stride = total.checked_div(bad).map_or(u64::MAX, |s| s.max(1));
        let (mut nj, mut os, mut mf) = (wl.not_json, wl.oversize, wl.missing_field);
        let mut large = wl.large;
        let mut good = Vec::new();
        for i in 0..total {
            let body = if bad > 0 && i % stride == stride / 2 && nj + os + mf + large > 0 {
                if large > 0 {
                    large -= 1;
                    format!(
                        r#"{{"company_id":"c{i:07}","blob":"{}"}}"#,
                        "x".repeat(200_000)
                    )
                } else if nj > 0 {
                    nj -= 1;
                    format!("company c{i:07} (not json)")
                } else if os > 0 {
                    os -= 1;
                    format!(
                        r#"{{"company_id":"c{i:07}","blob":"{}"}}"#,
                        "x".repeat(270_000)
                    )
                } else {
                    mf -= 1;
                    format!(r#"{{"company":"c{i:07}"}}"#)
                }
            } else {
                good.push(i);
                format!(r#"{{"company_id":"c{i:07}","kind":"refresh"}}"#)
            };
            self.add_origin(BULK, body, rng);
        }
        // Second updates of earlier companies, spread over them.
        let every = (good.len() as u64)
            .checked_div(wl.same_company)
            .unwrap_or(1)
            .max(1);
        for j in 0..wl.same_company.min(good.len() as u64) {
            let i = good[(j * every) as usize];
            let body = format!(r#"{{"company_id":"c{i:07}","kind":"correction"}}"#);
            self.add_origin(BULK, body, rng);
        }
        if let Some(a) = &wl.priority_arrivals {
            self.arrivals_left = a.count;
            if a.count > 0 {
                self.schedule(a.start_secs, Event::Arrival);
            }
        }
    }
}
