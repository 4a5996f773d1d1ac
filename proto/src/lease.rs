//! Who holds a lease, as stored in the lease record in Redis.

use crate::Error;

/// The holder of a lease: enough for the coordinator's reaper to re-run the
/// unit of a dead worker, and for `regatta leases` to say who holds what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOwner {
    pub worker: String,
    pub batch_id: String,
    pub unit_id: String,
    pub attempt: u32,
    pub session_id: String,
}

impl LeaseOwner {
    /// Encodes as tab-separated text, readable in `redis-cli`.
    pub fn encode(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.worker, self.batch_id, self.unit_id, self.attempt, self.session_id
        )
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    pub fn decode(text: &str) -> Result<Self, Error> {
        let fields: Vec<&str> = text.split('\t').collect();
        match fields.as_slice() {
            [worker, batch_id, unit_id, attempt, session_id] => Ok(LeaseOwner {
                worker: (*worker).to_owned(),
                batch_id: (*batch_id).to_owned(),
                unit_id: (*unit_id).to_owned(),
                attempt: attempt
                    .parse()
                    .map_err(|_| Error::Malformed(format!("lease owner attempt '{attempt}'")))?,
                session_id: (*session_id).to_owned(),
            }),
            _ => Err(Error::Malformed(format!("lease owner '{text}'"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_round_trips_and_garbage_is_refused() {
        let owner = LeaseOwner {
            worker: "host:1".into(),
            batch_id: "b".into(),
            unit_id: "u".into(),
            attempt: 2,
            session_id: "s".into(),
        };
        assert_eq!(LeaseOwner::decode(&owner.encode()).expect("decodes"), owner);
        assert!(LeaseOwner::decode("a\tb").is_err());
        assert!(LeaseOwner::decode("a\tb\tc\tx\te").is_err());
    }
}
