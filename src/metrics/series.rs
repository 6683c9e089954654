//! A counter family labelled by one typed label: each value's series is
//! created on first use (the first value up front, so dashboards find the
//! metric), looked up by index afterwards, and touched with its owner so the
//! idle timeout never drops a series whose owner still lives.

use std::sync::OnceLock;

use metrics::Counter;

use super::labels::Label;

pub(crate) struct LabelledCounter<L: Label> {
    name: &'static str,
    /// The labels every series of this family carries, e.g. `peer="b"`.
    fixed: Vec<metrics::Label>,
    key: &'static str,
    cells: Vec<OnceLock<Counter>>,
    _label: std::marker::PhantomData<L>,
}

impl<L: Label> LabelledCounter<L> {
    /// The family `name{fixed..., key=L}`, with `L::ALL[0]` created at zero.
    pub(crate) fn new(
        name: &'static str,
        fixed: Vec<metrics::Label>,
        key: &'static str,
    ) -> LabelledCounter<L> {
        let c = LabelledCounter {
            name,
            fixed,
            key,
            cells: L::ALL.iter().map(|_| OnceLock::new()).collect(),
            _label: std::marker::PhantomData,
        };
        if let Some(first) = L::ALL.first() {
            c.get(*first).increment(0);
        }
        c
    }

    /// Creates every value's series now, at zero.
    pub(crate) fn create_all(&self) {
        for l in L::ALL {
            self.get(*l).increment(0);
        }
    }

    fn get(&self, label: L) -> &Counter {
        self.cells[label.index()].get_or_init(|| {
            let mut labels = self.fixed.clone();
            labels.push(metrics::Label::new(self.key, label.as_str()));
            metrics::counter!(self.name, labels)
        })
    }

    pub(crate) fn increment(&self, label: L) {
        self.get(label).increment(1);
    }

    pub(crate) fn touch(&self) {
        for c in self.cells.iter().filter_map(OnceLock::get) {
            c.increment(0);
        }
    }
}

impl<L: Label> std::fmt::Debug for LabelledCounter<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelledCounter")
            .field("name", &self.name)
            .finish()
    }
}
