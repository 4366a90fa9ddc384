//! [`OutputBuffer`]: a task's output as lines, in a bounded ring.
//!
//! Chunks arrive cut anywhere, so a line stays *open* until its newline
//! comes; stdout and stderr each continue only their own open line. A
//! handler's log chunk is always a whole line. The oldest lines are dropped
//! past the capacity, and one very long line is cut, so a chatty task cannot
//! grow the dashboard's memory without bound. Text is cleaned for the
//! terminal: tabs become spaces, ANSI escape sequences and other control
//! characters are removed, and a carriage return starts its line again (a
//! progress bar that redraws itself shows its last state, not every state
//! glued together).

use std::collections::VecDeque;

use taskgrid_core::Stream;

use crate::text;

/// Longest line kept, in characters; the rest of it is dropped.
pub(crate) const MAX_LINE_CHARS: usize = 2_000;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputLine {
    /// Which stream it came from.
    pub(crate) stream: Stream,
    /// Its text, cleaned, without the newline.
    pub(crate) text: String,
    /// Its newline has not arrived yet.
    open: bool,
    /// A carriage return came last: the next text replaces the line's
    /// (unless a newline comes first, as in `\r\n`).
    restart: bool,
}

/// The last lines of a task's output.
#[derive(Debug, Clone)]
pub(crate) struct OutputBuffer {
    lines: VecDeque<OutputLine>,
    cap: usize,
    dropped: u64,
}

impl OutputBuffer {
    /// An empty buffer keeping at most `cap` lines (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        OutputBuffer {
            lines: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    /// Adds a chunk of `stream`.
    pub(crate) fn push(&mut self, stream: Stream, data: &str) {
        let mut rest = data;
        loop {
            let (piece, newline) = match rest.find('\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            if !piece.is_empty() || newline {
                let line = self.open_line(stream);
                for (i, part) in piece.split('\r').enumerate() {
                    if i > 0 {
                        line.restart = true;
                    }
                    if !part.is_empty() && std::mem::take(&mut line.restart) {
                        line.text.clear();
                    }
                    append_clean(&mut line.text, part);
                }
                if newline {
                    line.open = false;
                }
            }
            if !newline {
                break;
            }
            rest = &rest[piece.len() + 1..];
        }
        if stream == Stream::Log
            && let Some(last) = self.lines.back_mut()
        {
            last.open = false;
        }
        while self.lines.len() > self.cap {
            self.lines.pop_front();
            self.dropped += 1;
        }
    }

    /// The open line of `stream` at the end, or a new one.
    fn open_line(&mut self, stream: Stream) -> &mut OutputLine {
        let reuse = matches!(self.lines.back(), Some(l) if l.open && l.stream == stream);
        if !reuse {
            self.lines.push_back(OutputLine {
                stream,
                text: String::new(),
                open: true,
                restart: false,
            });
        }
        // Not empty: a line was pushed, or the last one is reused.
        let last = self.lines.len() - 1;
        &mut self.lines[last]
    }

    /// Lines kept.
    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }

    /// Lines dropped from the front so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept lines `range`, oldest first.
    pub(crate) fn lines(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &OutputLine> {
        self.lines.range(range)
    }
}

/// Appends `piece` to `line` without control characters or escape
/// sequences, up to [`MAX_LINE_CHARS`].
fn append_clean(line: &mut String, piece: &str) {
    let mut room = MAX_LINE_CHARS.saturating_sub(line.chars().count());
    for c in text::visible(piece) {
        if room == 0 {
            return;
        }
        if c == '\t' {
            let n = room.min(text::TAB.len());
            line.extend(std::iter::repeat_n(' ', n));
            room -= n;
        } else {
            line.push(c);
            room -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(b: &OutputBuffer) -> Vec<&str> {
        b.lines(0..b.len()).map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn chunks_cut_anywhere_make_the_same_lines() {
        let text = "one\ntwo\n\nthree";
        for split in 0..=text.len() {
            let mut b = OutputBuffer::new(10);
            b.push(Stream::Stdout, &text[..split]);
            b.push(Stream::Stdout, &text[split..]);
            assert_eq!(texts(&b), ["one", "two", "", "three"], "split at {split}");
        }
    }

    #[test]
    fn streams_keep_their_own_open_line_and_log_chunks_are_lines() {
        let mut b = OutputBuffer::new(10);
        b.push(Stream::Stdout, "out ");
        b.push(Stream::Stderr, "err\n");
        b.push(Stream::Log, "resizing");
        b.push(Stream::Log, "done");
        assert_eq!(texts(&b), ["out ", "err", "resizing", "done"]);
        assert_eq!(b.lines(1..2).next().map(|l| l.stream), Some(Stream::Stderr));
    }

    #[test]
    fn a_carriage_return_starts_its_line_again() {
        // A progress bar redraws its line; Windows ends lines with CR LF.
        let text = "10%\r20%\r30%\ndone\r\nnext\r";
        for split in 0..=text.len() {
            let mut b = OutputBuffer::new(10);
            b.push(Stream::Stdout, &text[..split]);
            b.push(Stream::Stdout, &text[split..]);
            assert_eq!(texts(&b), ["30%", "done", "next"], "split at {split}");
        }
    }

    #[test]
    fn the_ring_keeps_the_last_lines() {
        let mut b = OutputBuffer::new(3);
        for i in 0..10 {
            b.push(Stream::Stdout, &format!("line {i}\n"));
        }
        assert_eq!(texts(&b), ["line 7", "line 8", "line 9"]);
        assert_eq!(b.dropped(), 7);
    }

    #[test]
    fn control_characters_and_colours_are_removed_and_long_lines_cut() {
        let mut b = OutputBuffer::new(3);
        b.push(Stream::Stdout, "\x1b[31mred\x1b[0m\ta\x07b\r\n");
        assert_eq!(texts(&b), ["red    ab"]);
        b.push(Stream::Stdout, &"x".repeat(MAX_LINE_CHARS + 50));
        b.push(Stream::Stdout, "more");
        assert_eq!(
            b.lines(1..2).next().map(|l| l.text.len()),
            Some(MAX_LINE_CHARS)
        );
    }
}
