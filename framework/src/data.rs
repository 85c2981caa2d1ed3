//! Operator-wide user data: one shared value per type, registered with
//! [`Operator::data`](crate::Operator::data) and read by handlers with
//! [`Context::data`](crate::Context::data).

use crate::error::Error;
use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::sync::Arc;

/// The registered values, by type.
#[derive(Clone, Default)]
pub(crate) struct DataMap {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl DataMap {
    /// Registers `value` as the `T` of this operator; a second value of the
    /// same type replaces the first.
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    /// The registered `T`, if any.
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let v = self.values.get(&TypeId::of::<T>())?.clone();
        // Keyed by the TypeId of `T`: the downcast cannot fail.
        v.downcast::<T>().ok()
    }

    /// The registered `T`, or an error naming the type.
    pub(crate) fn require<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, Error> {
        self.get::<T>().ok_or_else(|| {
            Error::Config(format!(
                "no operator data of type `{}` (register it with Operator::data)",
                type_name::<T>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Settings {
        image: String,
    }

    #[test]
    fn values_are_found_by_type_and_shared() {
        let mut m = DataMap::default();
        let s = Arc::new(Settings { image: "i".into() });
        m.insert(s.clone());
        m.insert(Arc::new(7u32));
        let got = m.require::<Settings>().expect("registered");
        assert!(Arc::ptr_eq(&got, &s), "the same value, not a copy");
        assert_eq!(m.get::<u32>().as_deref(), Some(&7));
        assert!(m.get::<u64>().is_none(), "another type is not converted");
        m.insert(Arc::new(8u32));
        assert_eq!(m.get::<u32>().as_deref(), Some(&8), "replaced");
    }

    #[test]
    fn a_missing_type_is_a_clear_error() {
        let m = DataMap::default();
        let e = m.require::<Settings>().expect_err("not registered");
        let msg = e.to_string();
        assert!(msg.contains("data::tests::Settings"), "{msg}");
        assert!(msg.contains("Operator::data"), "{msg}");
    }
}
