//! The man page documents every flag the command line accepts.

#[test]
fn man_page_documents_every_flag() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/s3backer.1")).unwrap();
    let mut missing = Vec::new();
    for flag in s3b_cli::args::long_flags() {
        // roff escapes dashes as \-; the flag stands in bold, followed by its end or a value.
        let escaped = format!("\\fB\\-\\-{}\\fR", flag.replace('-', "\\-"));
        if !man.contains(&escaped) {
            missing.push(format!("--{flag}"));
        }
    }
    for c in s3b_cli::args::short_flags() {
        if !man.contains(&format!(".B \\-{c}")) && !man.contains(&format!("\\fB\\-{c}\\fR")) {
            missing.push(format!("-{c}"));
        }
    }
    assert!(missing.is_empty(), "flags missing from man/s3backer.1: {missing:?}");
}

#[test]
fn man_page_documents_every_fuse_option() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/s3backer.1")).unwrap();
    let missing: Vec<&str> = s3b_cli::fuse_options::TABLE
        .iter()
        .map(|o| o.name)
        .filter(|name| {
            // In bold, alone or followed by its `=`.
            let escaped = format!("\\fB{}", name.replace('-', "\\-"));
            !man.contains(&format!("{escaped}\\fR")) && !man.contains(&format!("{escaped}=\\fR"))
        })
        .collect();
    assert!(missing.is_empty(), "FUSE options missing from man/s3backer.1: {missing:?}");
}
