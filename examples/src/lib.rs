//! Shared helpers of the flame examples (none yet: each example stands alone).
