//! Label and field selectors, parsed as the API server parses them
//! (`k8s.io/apimachinery/pkg/labels` and `.../fields`) and matched against stored objects.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum Label {
    /// `key=value`, `key==value`, `key in (a,b)`.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)`: also matches objects without the key.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    Missing(String),
    /// `key>n`, `key<n` (integers).
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `labelSelector` and `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    labels: Vec<Label>,
    /// `(field path, value, equal)`.
    fields: Vec<(String, String, bool)>,
}

impl Selector {
    /// Parses both selectors; `fields_allowed` lists the kind's extra selectable fields.
    pub fn parse(
        labels: Option<&str>,
        fields: Option<&str>,
        fields_allowed: &[&str],
    ) -> Result<Self, String> {
        let mut s = Selector::default();
        if let Some(l) = labels {
            s.labels = parse_labels(l)?;
        }
        if let Some(f) = fields {
            s.fields = parse_fields(f, fields_allowed)?;
        }
        Ok(s)
    }

    /// True when the selector says nothing (a list then reports `remainingItemCount`).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|m| m.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            Label::In(k, vs) => label(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Label::NotIn(k, vs) => label(k).is_none_or(|v| vs.iter().all(|x| x != v)),
            Label::Exists(k) => label(k).is_some(),
            Label::Missing(k) => label(k).is_none(),
            Label::Gt(k, n) => label(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Label::Lt(k, n) => label(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        });
        labels_ok
            && self.fields.iter().all(|(path, want, equal)| {
                let got = field(obj, path);
                (got == *want) == *equal
            })
    }
}

/// A selectable field's value as the server's field set has it: a missing field is "".
fn field(obj: &Value, path: &str) -> String {
    let pointer = format!("/{}", path.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn parse_fields(s: &str, allowed: &[&str]) -> Result<Vec<(String, String, bool)>, String> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (key, value, equal) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, v, true)
        } else {
            return Err(format!(
                "invalid selector: '{s}'; can't understand '{term}'"
            ));
        };
        let key = key.trim();
        if key != "metadata.name" && key != "metadata.namespace" && !allowed.contains(&key) {
            return Err(format!("field label not supported: {key}"));
        }
        out.push((key.to_owned(), value.trim().to_owned(), equal));
    }
    Ok(out)
}

/// A token of the label selector grammar.
#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::Open);
            }
            ')' => {
                chars.next();
                out.push(Tok::Close);
            }
            ',' => {
                chars.next();
                out.push(Tok::Comma);
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let two = chars.peek() == Some(&'=');
                let op = match (c, two) {
                    ('=', true) => "==",
                    ('=', false) => "=",
                    ('!', true) => "!=",
                    ('!', false) => "!",
                    ('<', _) => "<",
                    ('>', _) => ">",
                    _ => unreachable!(),
                };
                if two && (c == '=' || c == '!') {
                    chars.next();
                }
                out.push(Tok::Op(op));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if " \t(),=!<>".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

fn parse_labels(s: &str) -> Result<Vec<Label>, String> {
    let bad = |why: &str| format!("unable to parse requirement: {why} (selector {s:?})");
    let toks = lex(s)?;
    let mut out = Vec::new();
    let mut i = 0;
    let word = |i: usize| match toks.get(i) {
        Some(Tok::Word(w)) => Some(w.clone()),
        _ => None,
    };
    while i < toks.len() {
        let req = if toks[i] == Tok::Op("!") {
            let key = word(i + 1).ok_or_else(|| bad("expected a key after '!'"))?;
            i += 2;
            Label::Missing(key)
        } else {
            let key = word(i).ok_or_else(|| bad("expected a key"))?;
            i += 1;
            match toks.get(i) {
                None | Some(Tok::Comma) => Label::Exists(key),
                Some(Tok::Op(op)) => {
                    let op = *op;
                    let value = word(i + 1).unwrap_or_default();
                    if !matches!(
                        toks.get(i + 1),
                        None | Some(Tok::Comma) | Some(Tok::Word(_))
                    ) {
                        return Err(bad("expected a value"));
                    }
                    i += if value.is_empty() { 1 } else { 2 };
                    match op {
                        "=" | "==" => Label::In(key, vec![value]),
                        "!=" => Label::NotIn(key, vec![value]),
                        ">" | "<" => {
                            let n = value.parse().map_err(|_| {
                                bad("for 'gt', 'lt' operators, the value must be an integer")
                            })?;
                            if op == ">" {
                                Label::Gt(key, n)
                            } else {
                                Label::Lt(key, n)
                            }
                        }
                        _ => return Err(bad("unknown operator")),
                    }
                }
                Some(Tok::Word(w)) if w == "in" || w == "notin" => {
                    let notin = w == "notin";
                    i += 1;
                    if toks.get(i) != Some(&Tok::Open) {
                        return Err(bad("expected '('"));
                    }
                    i += 1;
                    let mut values = Vec::new();
                    loop {
                        match toks.get(i) {
                            Some(Tok::Word(v)) => {
                                values.push(v.clone());
                                i += 1;
                            }
                            Some(Tok::Comma) => i += 1,
                            Some(Tok::Close) => {
                                i += 1;
                                break;
                            }
                            _ => return Err(bad("expected ')'")),
                        }
                    }
                    if values.is_empty() {
                        return Err(bad(
                            "for 'in', 'notin' operators, values set can't be empty",
                        ));
                    }
                    if notin {
                        Label::NotIn(key, values)
                    } else {
                        Label::In(key, values)
                    }
                }
                Some(_) => return Err(bad("expected an operator")),
            }
        };
        out.push(req);
        match toks.get(i) {
            None => {}
            Some(Tok::Comma) => {
                i += 1;
                if i == toks.len() {
                    return Err(bad("expected a requirement after ','"));
                }
            }
            Some(_) => return Err(bad("expected ','")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Selector;

    fn sel(l: &str) -> Selector {
        Selector::parse(Some(l), None, &[]).unwrap()
    }

    #[test]
    fn label_operators_match_as_kubernetes_documents() {
        let obj = json!({"metadata": {"labels": {"app": "shop", "tier": "web", "n": "5"}}});
        let bare = json!({"metadata": {}});
        for (s, on_obj, on_bare) in [
            ("app=shop", true, false),
            ("app==shop", true, false),
            ("app!=shop", false, true),
            ("app!=cart", true, true),
            ("app in (cart, shop)", true, false),
            ("app notin (cart,shop)", false, true),
            ("app", true, false),
            ("!app", false, true),
            ("app=shop,tier=web", true, false),
            ("app=shop,tier=db", false, false),
            ("n>4", true, false),
            ("n<5", false, false),
            ("", true, true),
        ] {
            assert_eq!(sel(s).matches(&obj), on_obj, "{s} on the labelled object");
            assert_eq!(
                sel(s).matches(&bare),
                on_bare,
                "{s} on an object without labels"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for s in ["app in shop", "app in ()", "=x", "app=shop,", "a b"] {
            assert!(
                Selector::parse(Some(s), None, &[]).is_err(),
                "{s:?} was accepted"
            );
        }
    }

    #[test]
    fn field_selectors_take_only_the_kinds_fields() {
        let secret =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "type": "kubernetes.io/tls"});
        let s = Selector::parse(
            None,
            Some("type=kubernetes.io/tls,metadata.name!=b"),
            &["type"],
        );
        assert!(s.unwrap().matches(&secret));
        let s = Selector::parse(None, Some("metadata.namespace==other"), &[]).unwrap();
        assert!(!s.matches(&secret));
        assert!(Selector::parse(None, Some("type=x"), &[]).is_err());
        assert!(Selector::parse(None, Some("metadata.name"), &[]).is_err());
    }
}
