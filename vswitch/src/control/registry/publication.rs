//! What a registry change leaves for the driver to do, as values: the registry itself never
//! touches the datapath (as quinn's `Endpoint` hands back `Transmit`s instead of sending).

use crate::datapath::Snapshot;

/// A change for the workers: the new snapshot (ports, adjacencies, neighbours, FIB readers).
///
/// The driver stores the snapshot where the workers load it and only then calls
/// [`Registry::publish_fibs`](super::Registry::publish_fibs): the FIBs' staged routes become
/// visible after the snapshot that holds their adjacencies, so a route a worker finds always has
/// its adjacency. Publications are made in generation order under the registry's lock and must
/// be stored in that order.
#[must_use = "workers see a change only once it is published"]
#[derive(Debug)]
pub struct Publication {
    pub snapshot: Snapshot,
}

/// A registry call's result, split into what the caller gets and what is left to publish.
pub trait Published {
    type Outcome;
    fn split(self) -> (Self::Outcome, Option<Publication>);
}

impl Published for Publication {
    type Outcome = ();
    fn split(self) -> ((), Option<Publication>) {
        ((), Some(self))
    }
}

impl Published for Option<Publication> {
    type Outcome = ();
    fn split(self) -> ((), Option<Publication>) {
        ((), self)
    }
}

impl<T> Published for (T, Publication) {
    type Outcome = T;
    fn split(self) -> (T, Option<Publication>) {
        (self.0, Some(self.1))
    }
}

impl<T> Published for (T, Option<Publication>) {
    type Outcome = T;
    fn split(self) -> (T, Option<Publication>) {
        self
    }
}

impl<P: Published, E> Published for Result<P, E> {
    type Outcome = Result<P::Outcome, E>;
    fn split(self) -> (Self::Outcome, Option<Publication>) {
        match self {
            Ok(published) => {
                let (outcome, publication) = published.split();
                (Ok(outcome), publication)
            }
            Err(e) => (Err(e), None),
        }
    }
}
