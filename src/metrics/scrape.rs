//! Reading back what the recorder renders: the samples of the Prometheus
//! text format (`name{label="value",...} value`), so `GET /status` shows
//! the same numbers as `GET /metrics` without keeping a second set of
//! counters in step with the first.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Every sample of `text` whose name is in `wanted` (all when empty).
/// Lines that do not parse are skipped: the text is the recorder's own.
pub fn parse(text: &str, wanted: &[&str]) -> Vec<Sample> {
    let asked = |l: &&str| {
        wanted.is_empty()
            || l.find(['{', ' '])
                .is_some_and(|end| wanted.contains(&&l[..end]))
    };
    // The name decides before any label is parsed: at 500 peers most of
    // the text is series nobody asked for.
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter(asked)
        .filter_map(line)
        .collect()
}

fn line(l: &str) -> Option<Sample> {
    let name_end = l.find(['{', ' '])?;
    let name = l[..name_end].to_string();
    let mut rest = &l[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(body)?;
        labels = parsed;
        rest = after;
    }
    // A timestamp may follow the value; the recorder writes none.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` -> the labels and what follows the `}`.
fn label_set(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_and_values_as_the_recorder_writes_them() {
        let text = "# HELP x_total help\n# TYPE x_total counter\n\
                    x_total{peer=\"b\",result=\"ok\"} 12\n\
                    y_seconds_bucket{peer=\"a \\\"q\\\" \\\\ z\",le=\"+Inf\"} 3\n\
                    plain 1.5e3\n\
                    broken{peer=\"b\" 1\n";
        let all = parse(text, &[]);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0].name, "x_total");
        assert_eq!(all[0].label("peer"), Some("b"));
        assert_eq!(all[0].label("result"), Some("ok"));
        assert_eq!(all[0].value, 12.0);
        assert_eq!(all[1].label("peer"), Some("a \"q\" \\ z"));
        assert_eq!(all[1].label("le"), Some("+Inf"));
        assert_eq!(all[2].value, 1500.0);
        assert!(all[2].labels.is_empty());
        let only = parse(text, &["plain"]);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].name, "plain");
    }
}
