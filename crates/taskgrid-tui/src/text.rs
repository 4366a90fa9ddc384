//! How text that came from tasks and people (commands, names, labels,
//! messages, output) is put on the screen.
//!
//! A terminal cell shows no control character: ratatui drops them, so
//! `"import time\nb=1"` would read `import timeb=1`. Each is made visible
//! first: on one line (a table row, an event, the status line) a line break
//! becomes [`BREAK`]; where there is room (the open task's command) each
//! line of the text is a line of the screen. Tabs become spaces; ANSI escape
//! sequences and other control characters are removed.

/// What stands for a line break in text shown on one line.
pub(crate) const BREAK: &str = " ⏎ ";
/// What a tab becomes on a line of its own, where indentation matters (a
/// script, output). On one line it is one space.
pub(crate) const TAB: &str = "    ";

/// `s` on one line: each line break (`\n`, `\r\n` or `\r`) shown as
/// [`BREAK`], each tab as a space. Breaks at the end are left out.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in lines(s).enumerate() {
        if i > 0 {
            out.push_str(BREAK);
        }
        out.extend(visible(line).map(|c| if c == '\t' { ' ' } else { c }));
    }
    out
}

/// The lines of `s`, split at `\n`, `\r\n` or `\r`, as they came (show
/// each with [`shown`]). Breaks at the end are left out: a script's last
/// newline makes no empty line.
pub(crate) fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.trim_end_matches(['\n', '\r'])
        .split('\n')
        .flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
}

/// One line (with no break in it) as shown on a line of its own: tabs as
/// [`TAB`].
pub(crate) fn shown(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in visible(line) {
        match c {
            '\t' => out.push_str(TAB),
            c => out.push(c),
        }
    }
    out
}

/// The characters of `s` a terminal shows, and tabs: ANSI escape sequences
/// (`ESC [` parameters, then a final byte in `@`..=`~`) and other control
/// characters, line breaks among them, are left out.
pub(crate) fn visible(s: &str) -> impl Iterator<Item = char> + '_ {
    let mut chars = s.chars();
    std::iter::from_fn(move || {
        loop {
            match chars.next()? {
                '\t' => return Some('\t'),
                '\x1b' => {
                    if chars.clone().next() == Some('[') {
                        chars.next();
                        // The rest of the sequence, up to its final byte.
                        chars.by_ref().find(|c| ('@'..='~').contains(c));
                    }
                }
                c if c.is_control() => {}
                c => return Some(c),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_shows_every_kind_of_break_and_drops_the_last() {
        assert_eq!(one_line("a\nb\r\nc\rd\n\n"), "a ⏎ b ⏎ c ⏎ d");
        assert_eq!(one_line("x\n\ny"), "x ⏎  ⏎ y", "an empty line is kept");
        assert_eq!(one_line("\tkey\x07 \x1b[1mbold\x1b[0m"), " key bold");
        assert_eq!(one_line(""), "");
    }

    #[test]
    fn lines_keep_their_text_and_indentation() {
        let script = "for i in 1 2; do\r\n\techo $i\ndone\n";
        let shown: Vec<String> = lines(script).map(shown).collect();
        assert_eq!(shown, ["for i in 1 2; do", "    echo $i", "done"]);
    }
}
