//! CEL rules (`x-kubernetes-validations`) that reject malformed values at
//! admission, so a typo is an API error naming the field instead of a
//! healthy-looking policy that fails when a backup runs.
//!
//! Every string a rule looks at has a `maxLength` in the schema: the API
//! server rejects rules whose estimated cost is unbounded.

use kube::core::Rule;

/// RFC 1123 subdomain (PVC, Secret and policy names).
const DNS1123_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A label value (empty allowed).
const LABEL_VALUE: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// A host name (labels of letters, digits and inner hyphens).
const HOST_NAME: &str =
    "^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$";
/// An image reference: optional registry host[:port], lowercase path
/// components, optional tag, optional sha256 digest.
const IMAGE_REFERENCE: &str = "^([A-Za-z0-9][-A-Za-z0-9.]*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";
/// An S3 bucket name (3-63 lowercase letters, digits, dots, hyphens).
const BUCKET: &str = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";

fn rule(expr: String, message: &str) -> Rule {
    Rule::new(expr).message(message)
}

/// `http://` or `https://` URL with a host.
pub fn http_url(field: &str) -> Rule {
    rule(
        "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''".into(),
        &format!("{field} must be an http:// or https:// URL with a host"),
    )
}

/// S3 bucket naming rules.
pub fn bucket(field: &str) -> Rule {
    rule(
        format!("self.matches('{BUCKET}') && !self.contains('..')"),
        &format!(
            "{field} must be a valid S3 bucket name: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
        ),
    )
}

/// A relative key prefix without `.`/`..` segments.
pub fn key_prefix(field: &str) -> Rule {
    rule(
        "!self.startsWith('/') && !self.matches('(^|/)[.][.]?(/|$)')".into(),
        &format!("{field} must not start with '/' or contain '.' or '..' segments"),
    )
}

/// An absolute path without `..` segments.
pub fn absolute_path(field: &str) -> Rule {
    rule(
        "self.startsWith('/') && !self.matches('(^|/)[.][.]?(/|$)')".into(),
        &format!("{field} must be an absolute path without '.' or '..' segments"),
    )
}

/// A host name or an IP address.
pub fn host(field: &str) -> Rule {
    rule(
        format!("isIP(self) || self.matches('{HOST_NAME}')"),
        &format!("{field} must be a host name or an IP address"),
    )
}

/// A container image reference.
pub fn image(field: &str) -> Rule {
    rule(
        format!("self.matches('{IMAGE_REFERENCE}')"),
        &format!("{field} must be a valid image reference such as registry.example.com/mover:1.0"),
    )
}

/// A positive resource quantity such as `10Gi`.
pub fn positive_quantity(field: &str) -> Rule {
    rule(
        "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))".into(),
        &format!("{field} must be a positive quantity such as 10Gi"),
    )
}

/// An RFC 1123 subdomain (lowercase letters, digits, '-' and '.').
pub fn dns_name(field: &str) -> Rule {
    rule(
        format!("self.matches('{DNS1123_SUBDOMAIN}')"),
        &format!(
            "{field} must be a lowercase RFC 1123 name: letters, digits, '-' and '.', starting and ending with a letter or digit"
        ),
    )
}

/// Every element of a list is an RFC 1123 subdomain.
pub fn dns_names(field: &str) -> Rule {
    rule(
        format!("self.all(n, n.matches('{DNS1123_SUBDOMAIN}'))"),
        &format!(
            "every entry of {field} must be a lowercase RFC 1123 name: letters, digits, '-' and '.', starting and ending with a letter or digit"
        ),
    )
}

/// One of a fixed set of strings.
pub fn one_of(field: &str, allowed: &[&str]) -> Rule {
    let list = allowed
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    rule(
        format!("self in [{list}]"),
        &format!("{field} must be one of {}", allowed.join(", ")),
    )
}

/// Schema of `targets.selector`: a `metav1.LabelSelector` with bounded sizes
/// and its label values and operators checked.
pub fn label_selector(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let value_rule = serde_json::json!([{
        "rule": format!("self.matches('{LABEL_VALUE}')"),
        "message": "a label value has at most 63 characters: letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
    }]);
    schemars::json_schema!({
        "description": "PVCs whose labels match (matchLabels and matchExpressions are ANDed).",
        "type": "object",
        "properties": {
            "matchLabels": {
                "description": "Labels a PVC must carry.",
                "type": "object",
                "maxProperties": 64,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 63,
                    "x-kubernetes-validations": value_rule,
                },
            },
            "matchExpressions": {
                "description": "Requirements on a PVC's labels.",
                "type": "array",
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "minLength": 1, "maxLength": 317},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {
                            "type": "array",
                            "maxItems": 256,
                            "items": {
                                "type": "string",
                                "maxLength": 63,
                                "x-kubernetes-validations": value_rule,
                            },
                        },
                    },
                    "x-kubernetes-validations": [{
                        "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
                        "message": "operators In and NotIn need values, Exists and DoesNotExist take none",
                    }],
                },
            },
        },
    })
}
