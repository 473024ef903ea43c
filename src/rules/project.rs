//! [`Projection`]: the parts of a payload that some rule reads, so routing can
//! copy those and skip the rest.
//!
//! A rule reads a document only at the keys it names, nested as they nest
//! (`$or` members included), and at a named leaf only the value's kind and
//! scalar (an object there only "exists"; an array's elements are matched one
//! by one). So the payload cut down to the named keys (objects keep only the
//! named keys, arrays keep every element, cut the same way) matches every rule
//! exactly as the whole payload does, and costs lookups of the named keys only.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{Field, Node, Rule};

/// The keys some rule names below one level of a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    // NOTE: a few keys per level in practice: a sorted list beats a hash map.
    keys: Vec<(String, Projection)>,
}

impl Projection {
    /// What `rules` read of the top-level field `field` (e.g. `"data"`); None
    /// when no rule names it.
    pub fn of_field<'a>(field: &str, rules: impl IntoIterator<Item = &'a Rule>) -> Option<Self> {
        let mut top = Projection::default();
        for r in rules {
            top.add_node(&r.root);
        }
        let i = top.find(field)?;
        Some(top.keys.swap_remove(i).1)
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.keys
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
    }

    fn child_mut(&mut self, key: &str) -> &mut Projection {
        let i = match self.keys.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
            Ok(i) => i,
            Err(i) => {
                self.keys
                    .insert(i, (key.to_string(), Projection::default()));
                i
            }
        };
        &mut self.keys[i].1
    }

    fn add_node(&mut self, node: &Node) {
        for (key, field) in &node.fields {
            let child = self.child_mut(key);
            if let Field::Nested(n) = field {
                child.add_node(n);
            }
        }
        for member in node.ors.iter().flatten() {
            self.add_node(member);
        }
    }

    /// What is named below `key`, if this level names it.
    pub fn get(&self, key: &str) -> Option<&Projection> {
        self.find(key).map(|i| &self.keys[i].1)
    }

    /// How many keys this level names.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is named below this level (a leaf of the rules).
    pub fn is_leaf(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys named at this level, sorted, each with what is named below it.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &Projection)> {
        self.keys.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// `value` cut down to what the rules read.
    pub fn project(&self, value: &Value) -> Value {
        match value {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, p) in &self.keys {
                    if let Some(v) = m.get(k) {
                        out.insert(k.clone(), p.project(v));
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.project(v)).collect()),
            scalar => scalar.clone(),
        }
    }

    /// Parses JSON `text` into the value [`Projection::project`] would make of
    /// it, skipping (without building) everything the rules do not read.
    pub fn parse(&self, text: &str) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = self.deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

impl<'de> DeserializeSeed<'de> for &Projection {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// Which of a level's keys a map key is, without allocating it.
struct KeySeed<'a>(&'a Projection);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.0.find(s))
    }
}

// NOTE: the scalars are made exactly as serde_json's own `Value` visitor makes
// them, so a projected value equals the projection of the parsed value.
impl<'de> Visitor<'de> for &Projection {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed(self))? {
            match key {
                Some(i) => {
                    let (k, p) = &self.keys[i];
                    let v = map.next_value_seed(p)?;
                    out.insert(k.clone(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(vs: &[Value]) -> Vec<Rule> {
        vs.iter().map(|v| Rule::compile(v).unwrap()).collect()
    }

    #[test]
    fn keeps_only_named_keys_and_matches_alike() {
        let rs = rules(&[
            json!({"data": {"tool": ["Bash"]}}),
            json!({"data": {"items": {"kind": ["x"]}}, "topic": [{"prefix": "a"}]}),
            json!({"$or": [{"data": {"n": [{"numeric": [">", 1]}]}}, {"data": {"tags": ["b"]}}]}),
        ]);
        let p = Projection::of_field("data", &rs).unwrap();
        let data = json!({
            "tool": "Bash", "params": {"command": "ls", "tool": "x"}, "n": 2.5,
            "items": [{"kind": "x", "other": [1, 2]}, 3, [{"kind": "y"}]],
            "tags": [], "skip": {"deep": [1, {"a": null}]}
        });
        let cut = p.project(&data);
        assert_eq!(
            cut,
            json!({"items": [{"kind": "x"}, 3, [{"kind": "y"}]], "n": 2.5, "tags": [], "tool": "Bash"})
        );
        assert_eq!(p.parse(&data.to_string()).unwrap(), cut);
        let whole = json!({"topic": "ab", "data": data});
        let cut_doc = json!({"topic": "ab", "data": cut});
        for r in &rs {
            assert_eq!(r.matches(&whole), r.matches(&cut_doc));
        }
        assert!(Projection::of_field("type", &rs).is_none());
    }

    #[test]
    fn parse_keeps_scalars_as_serde_does() {
        let p = Projection::of_field("data", &rules(&[json!({"data": {"a": [1]}})])).unwrap();
        for text in [
            r#"{"a": 1}"#,
            r#"{"a": -7}"#,
            r#"{"a": 1.5e300}"#,
            r#"{"a": 18446744073709551615}"#,
            r#"{"a": "x\u00e9\n"}"#,
            r#"{"a": null, "b": [1, {"c": "d"}]}"#,
            r#"[{"a": true}, 2]"#,
            r#""text""#,
        ] {
            let full: Value = serde_json::from_str(text).unwrap();
            assert_eq!(p.parse(text).unwrap(), p.project(&full), "{text}");
        }
        assert!(p.parse("{\"a\": 1} x").is_err());
    }
}
