//! The terminal: printing results (for people, or as JSON), and reading passphrases.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use serde::Serialize;
use zeroize::Zeroizing;

/// Print `value` as JSON for scripts, or `human()` for people.
pub(crate) fn output<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    if json {
        say(&serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        say(&human());
    }
}

/// Print a line; when the reader has gone away (`carom … | head`), stop quietly instead of
/// panicking the way `println!` does.
pub(crate) fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// A line typed by the user (shown as typed), without its newline.
pub(crate) fn ask(label: &str) -> Result<String, String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{label}").and_then(|()| out.flush());
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub(crate) fn prompt(label: &str) -> Result<Zeroizing<String>, String> {
    if std::io::stdin().is_terminal() {
        rpassword::prompt_password(label)
            .map(Zeroizing::new)
            .map_err(|e| format!("cannot read the passphrase: {e}"))
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the passphrase from standard input: {e}"))?;
        Ok(Zeroizing::new(
            line.trim_end_matches(['\n', '\r']).to_owned(),
        ))
    }
}

/// A passphrase from `file` (its first line), or asked for (twice when `confirm`, at a
/// terminal).
pub(crate) fn read_passphrase(
    file: Option<&PathBuf>,
    confirm: bool,
) -> Result<Zeroizing<String>, String> {
    if let Some(file) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        );
        return Ok(Zeroizing::new(
            text.lines().next().unwrap_or_default().to_owned(),
        ));
    }
    let first = prompt("Passphrase: ")?;
    if first.is_empty() {
        return Err(
            "an empty passphrase is not allowed (use --no-passphrase to choose none)".into(),
        );
    }
    if confirm && std::io::stdin().is_terminal() {
        let second = prompt("Again: ")?;
        if *first != *second {
            return Err("the passphrases differ".into());
        }
    }
    Ok(first)
}

/// A QR code of `uri`, in Unicode blocks, light on dark.
pub(crate) fn qr_code(uri: &str) -> Result<String, String> {
    let code =
        qrcode::QrCode::new(uri.as_bytes()).map_err(|e| format!("cannot make a QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build()
        + "\n")
}
