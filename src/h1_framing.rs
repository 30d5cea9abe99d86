//! PLACEHOLDER until the scanner lands (replaced in this same change).
use crate::hygiene::FramingError;
use std::sync::Arc;
pub struct FramingVerdicts;
impl FramingVerdicts {
    pub fn take(&self, _i: u64) -> Option<Result<(), FramingError>> {
        None
    }
}
pub struct ScannedIo<T>(T);
#[allow(clippy::new_ret_no_self)]
impl<T> ScannedIo<T> {
    pub fn new(inner: T) -> (T, Arc<FramingVerdicts>) {
        (inner, Arc::new(FramingVerdicts))
    }
}
