//! Image references: parsing never panics, and a parsed reference printed and parsed
//! again is the same reference (the printed form is the canonical one crisp stores).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = image::parse(input) else {
        return;
    };
    let printed = reference.to_string();
    let again = image::parse(&printed)
        .unwrap_or_else(|e| panic!("{input:?} parsed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, reference, "{input:?} printed as {printed:?}");
    if let Some(tagged) = reference.tagged_name() {
        let tagged = image::parse(&tagged)
            .unwrap_or_else(|e| panic!("the tagged name {tagged:?} does not parse: {e}"));
        assert_eq!(tagged.tag(), reference.tag());
        assert_eq!(tagged.name(), reference.name());
    }
});
