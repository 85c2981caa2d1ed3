pub use operator_framework_macros::*;
