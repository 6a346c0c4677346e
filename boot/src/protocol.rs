//! Parsing the `@@ktest` marker lines that test kernels print (see `kernel/src/testing.rs`).

/// One marker.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// `@@ktest plan <tests>`: printed at every boot, with the number of tests in the kernel.
    Plan { tests: usize },
    /// `@@ktest start <index> <name>`.
    Start { index: usize, name: String },
    /// `@@ktest ok <index>`.
    Ok { index: usize },
    /// `@@ktest fail <index>`.
    Fail { index: usize },
    /// `@@ktest done`: every selected test has run.
    Done,
}

const MARKER: &str = "@@ktest ";

/// Splits a serial line into the text before a marker (a test's own output that did not end in a
/// newline) and the marker's event. Lines without a marker are all text.
pub fn parse_line(line: &str) -> (&str, Option<Event>) {
    let Some(pos) = line.find(MARKER) else {
        return (line, None);
    };
    let (text, marker) = line.split_at(pos);
    let mut words = marker[MARKER.len()..].splitn(3, ' ');
    let kind = words.next().unwrap_or("");
    let num = |w: Option<&str>| w.and_then(|w| w.trim().parse::<usize>().ok());
    let event = match kind {
        "plan" => num(words.next()).map(|tests| Event::Plan { tests }),
        "start" => num(words.next()).map(|index| Event::Start {
            index,
            name: words.next().unwrap_or("?").trim().to_owned(),
        }),
        "ok" => num(words.next()).map(|index| Event::Ok { index }),
        "fail" => num(words.next()).map(|index| Event::Fail { index }),
        "done" => Some(Event::Done),
        _ => None,
    };
    match event {
        Some(e) => (text, Some(e)),
        None => (line, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_marker() {
        assert_eq!(
            parse_line("@@ktest plan 3"),
            ("", Some(Event::Plan { tests: 3 }))
        );
        assert_eq!(
            parse_line("@@ktest start 2 heap::boxes_work"),
            (
                "",
                Some(Event::Start {
                    index: 2,
                    name: "heap::boxes_work".into()
                })
            )
        );
        assert_eq!(
            parse_line("@@ktest ok 2"),
            ("", Some(Event::Ok { index: 2 }))
        );
        assert_eq!(
            parse_line("@@ktest fail 7"),
            ("", Some(Event::Fail { index: 7 }))
        );
        assert_eq!(parse_line("@@ktest done"), ("", Some(Event::Done)));
    }

    #[test]
    fn keeps_text_before_a_marker() {
        assert_eq!(
            parse_line("partial output@@ktest ok 1"),
            ("partial output", Some(Event::Ok { index: 1 }))
        );
    }

    #[test]
    fn plain_and_malformed_lines_are_text() {
        assert_eq!(parse_line("hello"), ("hello", None));
        assert_eq!(
            parse_line("@@ktest ok notanumber"),
            ("@@ktest ok notanumber", None)
        );
        assert_eq!(parse_line("@@ktest bogus"), ("@@ktest bogus", None));
    }
}
