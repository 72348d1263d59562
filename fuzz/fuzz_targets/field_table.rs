//! Fuzz target: arbitrary bytes as an encoded field table (long length, then key/value
//! entries), first through Warren's nesting scan (`warren::protocol::nesting::scan_table`),
//! then, when the scan lets them through, through amq-protocol-types' `parse_field_table`,
//! the parser Warren uses for every table it receives.
//!
//! That parser recurses once per nested table or array; Warren refuses nesting past
//! `MAX_NESTING` before it runs. Running the broker's own scan here means the fuzzer checks
//! that guard too: any input it passes that still overflows the parser's stack, or any
//! disagreement about a well-formed table's length, is a finding.

#![no_main]

use amq_protocol::types::parsing::parse_field_table;
use libfuzzer_sys::fuzz_target;
use warren::protocol::nesting::scan_table;

fuzz_target!(|data: &[u8]| {
    let Ok(scanned) = scan_table(data) else {
        return;
    };
    if let (Some(len), Ok((rest, _))) = (scanned, parse_field_table(data)) {
        assert_eq!(len, data.len() - rest.len(), "scan and parser disagree on the length");
    }
});
