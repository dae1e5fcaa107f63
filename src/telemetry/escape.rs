//! Log lines carry text a client chose (a path, a header-derived value); a raw control
//! or bidirectional-override character in it could forge or disguise a line in a
//! terminal or a log viewer (U+202E shows `/evil\u{202e}txt.exe` reversed). Every
//! formatted line passes through [`Escaping`] on its way to the writer, in both
//! formats, so that no field, message or future log call can carry one raw.
//!
//! Escaped: Unicode's control (Cc: C0, DEL, C1), format (Cf: bidirectional marks,
//! embeddings, overrides and isolates, zero-width characters, the BOM, tag characters)
//! and line and paragraph separator characters (U+2028, U+2029); the newline that ends
//! a line is kept. JSON lines get `\uXXXX` (the same string once decoded: a reader of
//! the JSON sees what the client sent), text lines `\u{XXXX}`. A terminal's colours
//! (ESC in text lines written to a TTY) are the formatter's own and stay.
//!
//! Costs one scan of the line's bytes; a line without such a character (every line
//! whose fields are ASCII text) is written as it is, without a copy.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

use tracing_subscriber::fmt::MakeWriter;

/// How escapes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EscapeStyle {
    /// `\uXXXX`, UTF-16 surrogate pairs beyond the BMP: valid inside a JSON string.
    Json,
    /// `\u{XXXX}`, like the text formatter's own escapes; `keep_esc` for coloured
    /// lines on a terminal.
    Text { keep_esc: bool },
}

/// A [`MakeWriter`] whose writers escape each line (see the module comment).
#[derive(Debug)]
pub(super) struct Escaping<M> {
    inner: M,
    style: EscapeStyle,
}

impl<M> Escaping<M> {
    pub(super) fn new(inner: M, style: EscapeStyle) -> Self {
        Self { inner, style }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Escaping<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer(),
            style: self.style,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer_for(meta),
            style: self.style,
        }
    }
}

/// Writes each buffer it is given escaped. The formatter hands over one whole line
/// per write, so a newline is kept only at the end of a buffer.
#[derive(Debug)]
pub(super) struct EscapingWriter<W> {
    inner: W,
    style: EscapeStyle,
}

impl<W: io::Write> io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(&escape_line(buf, self.style))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `line` with every character of the module comment's classes escaped.
pub(super) fn escape_line(line: &[u8], style: EscapeStyle) -> Cow<'_, [u8]> {
    let (body, end) = match line.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (line, &b""[..]),
    };
    let keep_esc = style == (EscapeStyle::Text { keep_esc: true });
    let plain = |byte: &u8| (0x20..0x7f).contains(byte) || (*byte == 0x1b && keep_esc);
    if body.iter().all(plain) {
        return Cow::Borrowed(line);
    }
    let mut escaped = String::with_capacity(line.len() + 16);
    for chunk in body.utf8_chunks() {
        for character in chunk.valid().chars() {
            if needs_escape(character) && !(character == '\u{1b}' && keep_esc) {
                push_escape(&mut escaped, character, style);
            } else {
                escaped.push(character);
            }
        }
        // Bytes that are not UTF-8 (the formatter writes `String`s, so never in
        // practice): shown as the replacement character, never raw.
        if !chunk.invalid().is_empty() {
            escaped.push(char::REPLACEMENT_CHARACTER);
        }
    }
    let mut bytes = escaped.into_bytes();
    bytes.extend_from_slice(end);
    Cow::Owned(bytes)
}

/// Unicode's Cc, Cf, Zl and Zp characters (general categories, Unicode 15.1).
fn needs_escape(character: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let code = u32::from(character);
    character.is_control()
        || FORMAT
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&code))
}

fn push_escape(out: &mut String, character: char, style: EscapeStyle) {
    match style {
        EscapeStyle::Json => {
            let mut units = [0u16; 2];
            for unit in character.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
        EscapeStyle::Text { .. } => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(character));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: EscapeStyle = EscapeStyle::Text { keep_esc: false };

    fn escaped(line: &str, style: EscapeStyle) -> String {
        String::from_utf8(escape_line(line.as_bytes(), style).into_owned()).expect("utf-8")
    }

    #[test]
    fn plain_lines_are_written_as_they_are() {
        for line in [
            "{\"path\":\"/a/b\"}\n",
            "INFO request path=/a\n",
            "",
            "no newline",
        ] {
            assert!(matches!(
                escape_line(line.as_bytes(), EscapeStyle::Json),
                Cow::Borrowed(_)
            ));
        }
        assert_eq!(
            escaped("caf\u{e9} \u{4e2d}\u{6587}\n", TEXT),
            "caf\u{e9} \u{4e2d}\u{6587}\n"
        );
    }

    #[test]
    fn bidi_and_invisible_characters_are_escaped_in_json_as_the_same_string() {
        let line = "{\"path\":\"/a/\u{202e}gpj.exe\u{2066}\u{200b}\u{feff}\u{85}\u{7f}\u{2028}\u{e0041}\"}\n";
        let out = escaped(line, EscapeStyle::Json);
        assert!(out.is_ascii(), "{out}");
        assert!(
            out.contains("\\u202e") && out.contains("\\udb40\\udc41"),
            "{out}"
        );
        assert!(out.ends_with("}\n") && out.matches('\n').count() == 1);
        let original: serde_json::Value = serde_json::from_str(line).expect("json");
        let decoded: serde_json::Value = serde_json::from_str(&out).expect("still json");
        assert_eq!(original, decoded);
    }

    #[test]
    fn text_lines_escape_controls_and_keep_only_the_final_newline() {
        let out = escaped("msg a\nforged=1\r\t\u{1b}[31m \u{202d}x \u{200e}\n", TEXT);
        assert_eq!(
            out,
            "msg a\\u{a}forged=1\\u{d}\\u{9}\\u{1b}[31m \\u{202d}x \\u{200e}\n"
        );
        let coloured = EscapeStyle::Text { keep_esc: true };
        assert_eq!(
            escaped("\u{1b}[2m \u{202e}\n", coloured),
            "\u{1b}[2m \\u{202e}\n"
        );
    }

    #[test]
    fn every_class_member_is_escaped_and_ordinary_letters_are_not() {
        for character in [
            '\u{0}', '\u{1f}', '\u{7f}', '\u{9f}', '\u{ad}', '\u{61c}', '\u{200f}', '\u{202a}',
            '\u{2069}', '\u{2029}',
        ] {
            assert!(needs_escape(character), "{:x}", u32::from(character));
        }
        for character in [
            'a',
            ' ',
            '\u{a0}',
            '\u{e9}',
            '\u{301}',
            '\u{2013}',
            '\u{fffd}',
            '\u{1f600}',
        ] {
            assert!(!needs_escape(character), "{:x}", u32::from(character));
        }
    }
}
