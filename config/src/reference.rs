//! The configuration reference, `docs/config.md`, generated from this crate's source so it cannot
//! drift from the code: the sections and keys are the fields of [`Config`](crate::Config) and the
//! structs it holds, spelled as serde spells them; the text is their `///` doc comments; the
//! defaults are those of `Config::default()`, the embedded defaults.
//!
//! The test fails when `docs/config.md` differs from what the source generates, when a key has no
//! doc comment, or when the keys found in the source are not exactly the keys serde writes.
//! `CLAWDEPLOY_BLESS=1 cargo test -p clawdeploy-config reference` rewrites the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use syn::{Attribute, Fields, GenericArgument, Item, PathArguments, Type};

/// The page's opening, before the generated sections.
const HEADER: &str = "\
# Configuration reference

<!-- Generated from the doc comments in config/src/*.rs by
     `CLAWDEPLOY_BLESS=1 cargo test -p clawdeploy-config reference`; edit those, not this file. -->

The config is TOML, given with `--config FILE`. Without a file the embedded defaults below apply.

Any scalar key can be overridden by an environment variable `CLAWDEPLOY_<SECTION>__<KEY>`, for example
`CLAWDEPLOY_SERVER__HTTP_LISTEN=0.0.0.0:80`. The override's value is parsed by the type of the key it
replaces. An unknown key is an error, in the file and in the environment.

The config is validated once, at start. Each error names the key, the bad value and what is allowed:

```
error: invalid configuration (2 problems):
  - server.http_listen = \"everywhere\": an IP address and port, such as 127.0.0.1:8080 or 0.0.0.0:80
  - routes[0].upstream = \"db:5432\": an IP address and port such as 127.0.0.1:9001 (host names are not resolved)
```

This page is generated from the doc comments of the config structs (`config/src/*.rs`): change
those, then run `CLAWDEPLOY_BLESS=1 cargo test -p clawdeploy-config reference`.
";

/// A struct or enum of the crate, as the reference needs it.
enum Decl {
    Struct {
        doc: Vec<String>,
        fields: Vec<Field>,
    },
    Enum {
        /// Variant names as serde spells them.
        variants: Vec<String>,
    },
}

struct Field {
    ident: String,
    key: String,
    ty: Type,
    doc: Vec<String>,
}

/// One row of a section's table.
struct Row {
    key: String,
    ty: String,
    /// One default per column (one column, or one per sibling table such as each tier).
    defaults: Vec<String>,
    doc: String,
}

/// One `##` section of the page.
struct Section {
    heading: String,
    intro: Vec<String>,
    /// Column names of the defaults: `["default"]`, or e.g. `["free", "pro", "team"]`.
    columns: Vec<String>,
    rows: Vec<Row>,
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference_path() -> PathBuf {
    crate_dir().join("../docs/config.md")
}

/// Serde's `rename` / `rename_all` (and a refusal of what the reference cannot follow).
struct SerdeAttrs {
    rename: Option<String>,
    rename_all: Option<String>,
    skip: bool,
}

fn serde_attrs(attrs: &[Attribute], what: &str) -> SerdeAttrs {
    let mut out = SerdeAttrs {
        rename: None,
        rename_all: None,
        skip: false,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            let name = meta
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            match name.as_str() {
                "rename" => out.rename = Some(meta.value()?.parse::<syn::LitStr>()?.value()),
                "rename_all" => {
                    out.rename_all = Some(meta.value()?.parse::<syn::LitStr>()?.value())
                }
                "skip" | "skip_serializing" | "skip_deserializing" => out.skip = true,
                "default" | "deny_unknown_fields" => {
                    if meta.input.peek(syn::Token![=]) {
                        meta.value()?.parse::<syn::LitStr>()?;
                    }
                }
                other => panic!(
                    "config/src/reference.rs does not know #[serde({other} …)] on {what}; \
                     teach it how the attribute changes the keys"
                ),
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("cannot read #[serde] on {what}: {e}"));
    }
    out
}

fn doc_lines(attrs: &[Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .map(|line| {
            line.strip_prefix(' ')
                .unwrap_or(&line)
                .trim_end()
                .to_string()
        })
        .collect()
}

/// `field` or `Variant` spelled by serde's `rename_all` rule.
fn apply_rename_all(name: &str, rule: Option<&str>, is_variant: bool) -> String {
    let snake = if is_variant {
        let mut s = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.extend(c.to_lowercase());
        }
        s
    } else {
        name.to_string()
    };
    match rule {
        None if is_variant => name.to_string(),
        None | Some("snake_case") => snake,
        Some("lowercase") => name.to_lowercase(),
        Some("UPPERCASE") => name.to_uppercase(),
        Some("kebab-case") => snake.replace('_', "-"),
        Some("SCREAMING_SNAKE_CASE") => snake.to_uppercase(),
        Some(other) => panic!("config/src/reference.rs does not know rename_all = {other:?}"),
    }
}

/// Every struct and enum of `config/src/*.rs`, by name.
fn declarations() -> BTreeMap<String, Decl> {
    let mut decls = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("src"))
        .expect("config/src")
        .map(|e| e.expect("config/src entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable source");
        let file = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
        for item in file.items {
            match item {
                Item::Struct(s) => {
                    let name = s.ident.to_string();
                    let attrs = serde_attrs(&s.attrs, &name);
                    let Fields::Named(named) = &s.fields else {
                        continue;
                    };
                    let fields = named
                        .named
                        .iter()
                        .filter_map(|f| {
                            let ident = f.ident.as_ref()?.to_string();
                            let what = format!("{name}::{ident}");
                            let fa = serde_attrs(&f.attrs, &what);
                            if fa.skip {
                                return None;
                            }
                            let key = fa.rename.unwrap_or_else(|| {
                                apply_rename_all(&ident, attrs.rename_all.as_deref(), false)
                            });
                            Some(Field {
                                ident,
                                key,
                                ty: f.ty.clone(),
                                doc: doc_lines(&f.attrs),
                            })
                        })
                        .collect();
                    decls.insert(
                        name,
                        Decl::Struct {
                            doc: doc_lines(&s.attrs),
                            fields,
                        },
                    );
                }
                Item::Enum(e) => {
                    let name = e.ident.to_string();
                    let attrs = serde_attrs(&e.attrs, &name);
                    let variants = e
                        .variants
                        .iter()
                        .filter_map(|v| {
                            let what = format!("{name}::{}", v.ident);
                            let va = serde_attrs(&v.attrs, &what);
                            (!va.skip).then(|| {
                                va.rename.unwrap_or_else(|| {
                                    apply_rename_all(
                                        &v.ident.to_string(),
                                        attrs.rename_all.as_deref(),
                                        true,
                                    )
                                })
                            })
                        })
                        .collect();
                    decls.insert(name, Decl::Enum { variants });
                }
                _ => {}
            }
        }
    }
    decls
}

/// The last path segment of a type and its first generic argument, e.g. `Vec<String>` →
/// (`Vec`, `String`).
fn type_parts(ty: &Type) -> (String, Option<&Type>) {
    let Type::Path(p) = ty else {
        return (String::new(), None);
    };
    let Some(last) = p.path.segments.last() else {
        return (String::new(), None);
    };
    let arg = match &last.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    };
    (last.ident.to_string(), arg)
}

/// The TOML type of a key, as the reference shows it.
fn toml_type(ty: &Type, decls: &BTreeMap<String, Decl>, what: &str) -> String {
    let (name, arg) = type_parts(ty);
    match name.as_str() {
        "String" => "string".into(),
        "PathBuf" => "string (path)".into(),
        "bool" => "boolean".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "integer".into()
        }
        "f32" | "f64" => "float".into(),
        "Vec" => format!(
            "array of {}s",
            toml_type(arg.expect("Vec<T>"), decls, what)
        ),
        "Option" => format!(
            "{} (optional)",
            toml_type(arg.expect("Option<T>"), decls, what)
        ),
        _ => match decls.get(&name) {
            Some(Decl::Enum { variants, .. }) => {
                let quoted: Vec<String> = variants.iter().map(|v| format!("`{v}`")).collect();
                match quoted.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => "string".into(),
                }
            }
            _ => panic!(
                "config/src/reference.rs does not know how {what}'s type `{name}` is written in TOML"
            ),
        },
    }
}

/// A doc comment as one table cell: one line, intra-doc links as plain code, pipes escaped.
fn cell(doc: &[String]) -> String {
    let joined = doc
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    plain_intra_doc_links(&joined).replace('|', "\\|")
}

/// `` [`Name`] `` (a rustdoc intra-doc link, not followed by a Markdown target) → `` `Name` ``.
fn plain_intra_doc_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        match from[2..].find("`]") {
            Some(end) if !from[2 + end + 2..].starts_with('(') => {
                out.push('`');
                out.push_str(&from[2..2 + end]);
                out.push('`');
                rest = &from[2 + end + 2..];
            }
            _ => {
                out.push_str("[`");
                rest = &from[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A struct's doc as a section's opening paragraphs, without a leading `` `[section]` `` marker
/// that the heading already shows.
fn intro(doc: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = doc.iter().map(|l| plain_intra_doc_links(l)).collect();
    if let Some(first) = lines.first_mut() {
        let marker_end = first
            .starts_with("`[")
            .then(|| first.find("]`"))
            .flatten()
            .map(|end| end + 2)
            .filter(|&end| matches!(first[end..].chars().next(), None | Some(':' | '.')));
        if let Some(end) = marker_end {
            let rest = first[end..]
                .trim_start_matches([':', '.'])
                .trim_start()
                .to_string();
            let mut chars = rest.chars();
            *first = match chars.next() {
                Some(c) => c.to_uppercase().chain(chars).collect(),
                None => String::new(),
            };
        }
    }
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    lines
}

/// A default value as the reference shows it, with a friendlier unit where one helps.
fn show_default(key: &str, value: Option<&toml::Value>) -> String {
    let Some(value) = value else {
        return "required".into();
    };
    let shown = format!("`{value}`");
    let toml::Value::Integer(n) = value else {
        return shown;
    };
    let n = *n;
    let friendly = if key.ends_with("_secs") && n >= 3_600 {
        if n % 86_400 == 0 {
            let days = n / 86_400;
            Some(format!("{days} day{}", if days == 1 { "" } else { "s" }))
        } else if n % 3_600 == 0 {
            Some(format!("{} h", n / 3_600))
        } else {
            None
        }
    } else if key.ends_with("_bytes") && n >= 1 << 10 {
        if n % (1 << 20) == 0 {
            Some(format!("{} MiB", n >> 20))
        } else if n % (1 << 10) == 0 {
            Some(format!("{} KiB", n >> 10))
        } else {
            None
        }
    } else {
        None
    };
    match friendly {
        Some(f) => format!("{shown} ({f})"),
        None => shown,
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(*p)?.as_table()?;
    }
    t.get(*last)
}

/// The generated page, and the keys it documents (dotted paths, as serde writes them).
fn generate() -> (String, BTreeSet<String>, Vec<String>) {
    let decls = declarations();
    let defaults = toml::Table::try_from(crate::Config::default()).expect("defaults serialize");
    let mut sections = Vec::new();
    let mut keys = BTreeSet::new();
    let mut undocumented = Vec::new();

    let Some(Decl::Struct { fields, .. }) = decls.get("Config") else {
        panic!("no struct Config in config/src");
    };
    for top in fields {
        let (outer, inner) = type_parts(&top.ty);
        let (struct_name, array) = match (outer.as_str(), inner) {
            ("Vec", Some(t)) => (type_parts(t).0, true),
            _ => (outer, false),
        };
        let Some(Decl::Struct { doc, fields, .. }) = decls.get(&struct_name) else {
            panic!(
                "Config::{} is not a table; config/src/reference.rs expects every top-level key \
                 to be a section",
                top.ident
            );
        };
        // A table of same-typed tables, such as `[tiers.free]`, `[tiers.pro]`, `[tiers.team]`:
        // one section with a default column per table.
        let nested: Vec<&Field> = fields
            .iter()
            .filter(|f| matches!(decls.get(&type_parts(&f.ty).0), Some(Decl::Struct { .. })))
            .collect();
        let (heading, columns, row_struct, paths): (String, Vec<String>, &str, Vec<Vec<&str>>) =
            if array {
                (
                    format!("`[[{}]]`", top.key),
                    vec!["default".into()],
                    struct_name.as_str(),
                    vec![],
                )
            } else if !nested.is_empty() {
                let inner_ty = type_parts(&nested[0].ty).0;
                assert!(
                    nested.len() == fields.len()
                        && nested.iter().all(|f| type_parts(&f.ty).0 == inner_ty),
                    "{struct_name} mixes keys and tables; config/src/reference.rs handles a \
                     section of keys, or a section of same-typed tables"
                );
                (
                    format!("`[{}.<{}>]`", top.key, singular(&top.key)),
                    nested.iter().map(|f| f.key.clone()).collect(),
                    decls
                        .get_key_value(&inner_ty)
                        .map(|(k, _)| k.as_str())
                        .unwrap(),
                    nested
                        .iter()
                        .map(|f| vec![top.key.as_str(), f.key.as_str()])
                        .collect(),
                )
            } else {
                (
                    format!("`[{}]`", top.key),
                    vec!["default".into()],
                    struct_name.as_str(),
                    vec![vec![top.key.as_str()]],
                )
            };
        let Some(Decl::Struct {
            fields: row_fields, ..
        }) = decls.get(row_struct)
        else {
            unreachable!()
        };
        let mut rows = Vec::new();
        for f in row_fields {
            let shown_key = if array {
                format!("{}[].{}", top.key, f.key)
            } else if !nested.is_empty() {
                format!("{}.<{}>.{}", top.key, singular(&top.key), f.key)
            } else {
                format!("{}.{}", top.key, f.key)
            };
            if f.doc.iter().all(|l| l.trim().is_empty()) {
                undocumented.push(format!(
                    "{shown_key}: add a `///` doc comment to field `{}` of `struct {row_struct}`",
                    f.ident
                ));
            }
            let column_defaults = if array {
                // The array holds no defaults; serde writes it as one (empty) key.
                keys.insert(top.key.clone());
                vec![show_default(&f.key, None)]
            } else {
                paths
                    .iter()
                    .map(|p| {
                        let mut full = p.clone();
                        full.push(f.key.as_str());
                        keys.insert(full.join("."));
                        show_default(&f.key, lookup(&defaults, &full))
                    })
                    .collect()
            };
            rows.push(Row {
                key: shown_key,
                ty: toml_type(&f.ty, &decls, &format!("{row_struct}::{}", f.ident)),
                defaults: column_defaults,
                doc: cell(&f.doc),
            });
        }
        if doc.is_empty() {
            undocumented.push(format!(
                "section {heading}: add a `///` doc comment to `struct {struct_name}`"
            ));
        }
        sections.push(Section {
            heading,
            intro: intro(doc),
            columns,
            rows,
        });
    }

    let mut page = String::from(HEADER);
    page.push_str("\nSections: ");
    let links: Vec<String> = sections
        .iter()
        .map(|s| format!("[{}](#{})", s.heading, github_slug(&s.heading)))
        .collect();
    page.push_str(&links.join(", "));
    page.push_str(".\n");
    for s in &sections {
        let _ = write!(page, "\n## {}\n\n", s.heading);
        if !s.intro.is_empty() {
            for line in &s.intro {
                page.push_str(line);
                page.push('\n');
            }
            page.push('\n');
        }
        let _ = writeln!(page, "| key | type | {} | meaning |", s.columns.join(" | "));
        let _ = writeln!(page, "|---|---|{}---|", "---|".repeat(s.columns.len()));
        for r in &s.rows {
            let _ = writeln!(
                page,
                "| `{}` | {} | {} | {} |",
                r.key,
                r.ty,
                r.defaults.join(" | "),
                r.doc
            );
        }
    }
    (page, keys, undocumented)
}

/// `tiers` → `tier`, for the `<tier>` placeholder.
fn singular(word: &str) -> &str {
    word.strip_suffix('s').unwrap_or(word)
}

/// GitHub's heading anchor (the same rule as scripts/check-docs.sh).
fn github_slug(heading: &str) -> String {
    heading
        .replace('`', "")
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every dotted key serde writes for the defaults (arrays of tables left out: they hold no
/// defaults).
fn serialized_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => serialized_keys(t, &path, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

fn first_difference(a: &str, b: &str) -> String {
    for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!(
                "first difference at line {}:\n  docs/config.md: {x}\n  generated:      {y}",
                n + 1
            );
        }
    }
    format!(
        "one is a prefix of the other ({} vs {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_docs_config_md_matches_the_config_structs() {
        let (page, keys, undocumented) = generate();
        assert!(
            undocumented.is_empty(),
            "every config key needs a doc comment saying what it does (and its unit):\n  {}",
            undocumented.join("\n  ")
        );

        let mut written = BTreeSet::new();
        let defaults = toml::Table::try_from(crate::Config::default()).unwrap();
        serialized_keys(&defaults, "", &mut written);
        let only_read: Vec<_> = keys.difference(&written).collect();
        let only_written: Vec<_> = written.difference(&keys).collect();
        assert!(
            only_read.is_empty() && only_written.is_empty(),
            "the keys read from config/src/*.rs differ from the keys serde writes \
             (config/src/reference.rs misreads an attribute or a type):\n  \
             only in the source: {only_read:?}\n  only written by serde: {only_written:?}"
        );

        let path = reference_path();
        if std::env::var_os("CLAWDEPLOY_BLESS").is_some() {
            std::fs::write(&path, &page).expect("write docs/config.md");
            return;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == page,
            "docs/config.md is not what config/src/*.rs generates ({}).\n\
             Edit the doc comments in config/src, then regenerate it with\n\
             \n    CLAWDEPLOY_BLESS=1 cargo test -p clawdeploy-config reference\n",
            first_difference(&current, &page)
        );
    }

    #[test]
    fn reference_renames_follow_serde() {
        assert_eq!(
            apply_rename_all("LocalCa", Some("kebab-case"), true),
            "local-ca"
        );
        assert_eq!(
            apply_rename_all("OpenClaw", Some("lowercase"), true),
            "openclaw"
        );
        assert_eq!(
            apply_rename_all("Rfc2136", Some("lowercase"), true),
            "rfc2136"
        );
        assert_eq!(apply_rename_all("http_listen", None, false), "http_listen");
        assert_eq!(github_slug("`[tiers.<tier>]`"), "tierstier");
        assert_eq!(github_slug("`[rate_limits]`"), "rate_limits");
        assert_eq!(github_slug("`[[routes]]`"), "routes");
    }

    #[test]
    fn reference_defaults_read_well() {
        let v = |n| Some(toml::Value::Integer(n));
        assert_eq!(show_default("x_secs", v(43_200).as_ref()), "`43200` (12 h)");
        assert_eq!(
            show_default("x_secs", v(604_800).as_ref()),
            "`604800` (7 days)"
        );
        assert_eq!(
            show_default("x_bytes", v(32_768).as_ref()),
            "`32768` (32 KiB)"
        );
        assert_eq!(show_default("x_secs", v(30).as_ref()), "`30`");
        assert_eq!(
            show_default("s", Some(&toml::Value::String("a".into()))),
            "`\"a\"`"
        );
        assert_eq!(show_default("host", None), "required");
    }
}
