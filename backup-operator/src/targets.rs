//! Which PVCs a policy selects: pure matching over a listed set of PVCs.

use crate::api::Targets;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// A PVC as far as selection cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvcInfo {
    /// PVC name.
    pub name: String,
    /// PVC labels.
    pub labels: BTreeMap<String, String>,
    /// Being deleted.
    pub terminating: bool,
}

/// The outcome of resolving a policy's targets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Selected PVC names, sorted and unique.
    pub selected: Vec<String>,
    /// Names listed in `targets.names` that do not exist.
    pub missing: Vec<String>,
}

/// Why a selector cannot be evaluated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid label selector: {0}")]
pub struct SelectorError(pub String);

/// Resolves `targets` against the PVCs of the namespace.
pub fn resolve(targets: &Targets, pvcs: &[PvcInfo]) -> Result<Resolution, SelectorError> {
    let mut selected = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    for name in &targets.names {
        match pvcs.iter().find(|p| &p.name == name) {
            Some(p) if !p.terminating => {
                selected.insert(p.name.clone());
            }
            Some(_) => {}
            None => missing.push(name.clone()),
        }
    }
    if let Some(sel) = &targets.selector {
        for p in pvcs {
            if !p.terminating && matches(sel, &p.labels)? {
                selected.insert(p.name.clone());
            }
        }
    }
    missing.sort();
    missing.dedup();
    Ok(Resolution {
        selected: selected.into_iter().collect(),
        missing,
    })
}

/// Evaluates a metav1.LabelSelector (matchLabels AND every matchExpression).
pub fn matches(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    if let Some(ml) = &sel.match_labels
        && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return Ok(false);
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" if values.is_empty() => {
                return Err(SelectorError(format!("{}: In needs values", e.key)));
            }
            "NotIn" if values.is_empty() => {
                return Err(SelectorError(format!("{}: NotIn needs values", e.key)));
            }
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(SelectorError(format!(
                    "{}: unknown operator {other:?}",
                    e.key
                )));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn pvc(name: &str, labels: &[(&str, &str)]) -> PvcInfo {
        PvcInfo {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminating: false,
        }
    }

    fn sel(labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: Some(exprs),
        }
    }

    #[test]
    fn names_and_selector_union() {
        let pvcs = vec![
            pvc("a", &[("app", "demo")]),
            pvc("b", &[]),
            pvc("c", &[("app", "demo")]),
            pvc("d", &[("app", "x")]),
        ];
        let t = Targets {
            names: vec!["b".into(), "ghost".into()],
            selector: Some(sel(&[("app", "demo")], vec![])),
        };
        let r = resolve(&t, &pvcs).expect("valid");
        assert_eq!(r.selected, ["a", "b", "c"]);
        assert_eq!(r.missing, ["ghost"]);
    }

    #[test]
    fn expressions() {
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        };
        let labels: BTreeMap<_, _> = [("tier".to_string(), "db".to_string())].into();
        assert!(
            matches(
                &sel(&[], vec![req("tier", "In", &["db", "cache"])]),
                &labels
            )
            .expect("ok")
        );
        assert!(!matches(&sel(&[], vec![req("tier", "NotIn", &["db"])]), &labels).expect("ok"));
        assert!(matches(&sel(&[], vec![req("tier", "Exists", &[])]), &labels).expect("ok"));
        assert!(matches(&sel(&[], vec![req("zone", "DoesNotExist", &[])]), &labels).expect("ok"));
        assert!(matches(&sel(&[], vec![req("tier", "Bogus", &[])]), &labels).is_err());
    }

    #[test]
    fn terminating_pvcs_are_not_selected() {
        let mut p = pvc("a", &[("app", "demo")]);
        p.terminating = true;
        let t = Targets {
            names: vec!["a".into()],
            selector: Some(sel(&[("app", "demo")], vec![])),
        };
        let r = resolve(&t, &[p]).expect("valid");
        assert!(r.selected.is_empty() && r.missing.is_empty());
    }
}
