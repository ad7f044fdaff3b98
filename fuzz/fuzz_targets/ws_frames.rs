//! The WebSocket frame meter's parser (metering/src/frames.rs): arbitrary bytes never panic, and
//! the events do not depend on how the stream is split into reads (the relay sees TCP reads of any
//! size): same headers, same unmasked payload, same frame ends, same error.
#![no_main]

#[allow(dead_code)]
#[path = "../../metering/src/frames.rs"]
mod frames;

use frames::{FrameEvent, FrameParser};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Header(String),
    Payload(Vec<u8>),
    End,
    Error(String),
}

/// Feeds `data` in the given pieces; what was seen, payload runs merged per frame.
fn run(data: &[u8], cuts: &[usize]) -> Vec<Seen> {
    let mut parser = FrameParser::new();
    let mut seen = Vec::new();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(data.len());
    for end in bounds {
        if end < start {
            continue;
        }
        let result = parser.feed(&data[start..end], |event| match event {
            FrameEvent::Header { header, .. } => seen.push(Seen::Header(format!("{header:?}"))),
            FrameEvent::Payload { data, .. } => {
                let mut out = Vec::new();
                data.unmask_into(&mut out);
                match seen.last_mut() {
                    Some(Seen::Payload(run)) => run.extend(out),
                    _ => seen.push(Seen::Payload(out)),
                }
            }
            FrameEvent::FrameEnd { .. } => seen.push(Seen::End),
        });
        if let Err(e) = result {
            seen.push(Seen::Error(format!("{e:?}")));
            return seen;
        }
        start = end;
    }
    seen
}

fuzz_target!(|input: (Vec<u8>, Vec<usize>)| {
    let (data, cuts) = input;
    let whole = run(&data, &[]);
    let split = run(&data, &cuts);
    assert_eq!(whole, split, "splitting at {cuts:?} changed the events");
});
