//! Arbitrary bytes (as lossy UTF-8) as a `.raibid.yaml` → `Pipeline::parse` must not panic; an accepted
//! pipeline must satisfy the invariants the agent relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raibid_core::pipeline::{Pipeline, RESERVED_STEPS};
use std::collections::BTreeSet;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = Pipeline::parse(&text) {
        assert!(!p.steps.is_empty(), "no steps");
        let mut names = BTreeSet::new();
        for s in &p.steps {
            assert!(names.insert(s.name.as_str()), "duplicate step name {:?}", s.name);
            assert!(!RESERVED_STEPS.contains(&s.name.as_str()), "reserved step name {:?}", s.name);
            assert!(!s.name.is_empty() && s.name.len() <= 64, "step name {:?}", s.name);
            assert!(!s.run.trim().is_empty() && !s.run.contains('\0'), "step run {:?}", s.run);
            assert!(s.timeout.is_none_or(|t| !t.is_zero()), "zero step timeout");
        }
        assert!(!p.name.is_empty() && p.name.len() <= 64, "pipeline name {:?}", p.name);
        assert!(!p.timeout.is_zero(), "zero job timeout");
    }
});
