//! What the invariants are judged by beyond the report's counts: which
//! receives of a message a fault explains (invariant 4 allows those and no
//! others).

use super::World;

impl World {
    /// A failed call on these receipts may bring their messages back.
    pub(super) fn excuse_receipts(&mut self, receipts: &[String]) {
        for r in receipts {
            if let Some(o) = self.sqs.origin_of_receipt(r) {
                self.origins[o as usize].excused_receives += 1;
            }
        }
    }

    /// A controller crashed: what it held comes back after its visibility
    /// timeout (the driver calls this).
    pub fn crashed(&mut self) {
        for o in self.sqs.hidden_origins() {
            self.origins[o as usize].excused_receives += 1;
        }
    }

    /// Receives of workload messages beyond their first that no fault
    /// explains (`Origin::excused_receives`): what invariant 4 forbids.
    pub fn unexplained_receives(&self) -> u64 {
        self.sqs
            .receive_counts()
            .map(|(o, n)| {
                let allowed = 1 + self.origins[o as usize].excused_receives;
                u64::from(n.saturating_sub(allowed))
            })
            .sum()
    }

    /// The highest account-wide Lambda concurrency (pipeline and other
    /// load in use), as the account's CloudWatch series would peak.
    pub fn account_peak(&self) -> f64 {
        self.lambda.account_peak()
    }
}
