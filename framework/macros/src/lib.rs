//! Attribute macros for `operator-framework` handlers.
//!
//! Each attribute is put on an `async fn name(ctx: Context<K>) -> HandlerResult`
//! and replaces it by a registration function `fn name() -> Handler<K>` (same
//! visibility, same doc comments). `K` is taken from the `Context<K>`
//! parameter. The original async function lives on inside the registration
//! function. Register handlers explicitly with
//! `Controller::handler(name())`.
//!
//! Options (all optional unless noted):
//! * `id = "..."` (default: the function name)
//! * `retries = N` (give up after N retries, i.e. N + 1 failed runs)
//! * `backoff_base = "1s"`, `backoff_max = "5m"`
//! * `timeout = "60s"` (per run; default: the operator's `handler_timeout`)
//! * `labels("app=demo", "tier", "!skip")`, `annotations("x")`
//! * `when = path::to::predicate` (`fn(&K) -> bool`)
//! * `on_field`: `path = "spec.schedule"` (required); `value = ..`,
//!   `old = ..`, `new = ..` (string, integer or bool literals: fire only
//!   while the field is `value`, for changes away from `old`, to `new`)
//! * `on_timer`: `interval = "60s"` (required), `initial_delay = "5s"`
//! * `daemon`: `cancellation_timeout = "10s"`
//! * `on_delete`: `optional` (no finalizer)
//!
//! Durations are written like `500ms`, `10s`, `5m`, `1h`, `1m30s`.
//!
//! Rejected at compile time: a zero `interval`, `backoff_base`,
//! `backoff_max` or `timeout`, a `backoff_base` above `backoff_max`, an
//! empty `id` or `path`. Duplicate ids cannot be seen by one attribute; they
//! are rejected when registered (`Controller::handler`, reported by
//! `Operator::run`).

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    Expr, FnArg, GenericArgument, ItemFn, LitInt, LitStr, PathArguments, Token, Type,
    parse_macro_input,
};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Create,
    Update,
    Delete,
    Resume,
    Field,
    Timer,
    Event,
    Daemon,
}

#[derive(Default)]
struct Opts {
    id: Option<LitStr>,
    retries: Option<LitInt>,
    backoff_base: Option<u64>,
    backoff_max: Option<u64>,
    timeout: Option<u64>,
    labels: Vec<LitStr>,
    annotations: Vec<LitStr>,
    when: Option<Expr>,
    path: Option<LitStr>,
    interval: Option<u64>,
    initial_delay: Option<u64>,
    cancellation_timeout: Option<u64>,
    optional: bool,
    value: Option<syn::Lit>,
    old: Option<syn::Lit>,
    new: Option<syn::Lit>,
}

/// Parses `1h30m`, `5m`, `10s`, `250ms` into milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = String::from(c);
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration `{s}`: number expected before `{unit}`"))?;
        num.clear();
        let mult = match unit.as_str() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "invalid duration unit `{other}` in `{s}` (use ms, s, m, h, d)"
                ));
            }
        };
        total = total.saturating_add(n.saturating_mul(mult));
    }
    if !num.is_empty() {
        return Err(format!(
            "invalid duration `{s}`: missing unit (e.g. `{num}s`)"
        ));
    }
    Ok(total)
}

fn dur(lit: &LitStr) -> syn::Result<u64> {
    parse_duration_ms(&lit.value()).map_err(|e| syn::Error::new(lit.span(), e))
}

/// A duration that must be above zero (intervals, backoffs, timeouts).
fn positive(lit: &LitStr, what: &str) -> syn::Result<u64> {
    match dur(lit)? {
        0 => Err(syn::Error::new(
            lit.span(),
            format!("{what} must be above zero"),
        )),
        ms => Ok(ms),
    }
}

/// A string option that must not be empty (`id`, `path`).
fn non_empty(lit: LitStr, what: &str) -> syn::Result<LitStr> {
    if lit.value().trim().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format!("{what} must not be empty"),
        ));
    }
    Ok(lit)
}

fn parse_opts(attr: TokenStream2, kind: Kind) -> syn::Result<Opts> {
    let mut o = Opts::default();
    let parser = syn::meta::parser(|meta| {
        let name = meta
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        match name.as_str() {
            "id" => o.id = Some(non_empty(meta.value()?.parse()?, "id")?),
            "retries" => o.retries = Some(meta.value()?.parse()?),
            "backoff_base" => {
                o.backoff_base = Some(positive(&meta.value()?.parse()?, "backoff_base")?)
            }
            "backoff_max" => {
                o.backoff_max = Some(positive(&meta.value()?.parse()?, "backoff_max")?)
            }
            "timeout" => o.timeout = Some(positive(&meta.value()?.parse()?, "timeout")?),
            "when" => o.when = Some(meta.value()?.parse()?),
            "labels" | "annotations" => {
                let content;
                syn::parenthesized!(content in meta.input);
                let list: Punctuated<LitStr, Token![,]> =
                    content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?;
                if name == "labels" {
                    o.labels.extend(list);
                } else {
                    o.annotations.extend(list);
                }
            }
            "path" if kind == Kind::Field => {
                o.path = Some(non_empty(meta.value()?.parse()?, "path")?)
            }
            "interval" if kind == Kind::Timer => {
                o.interval = Some(positive(&meta.value()?.parse()?, "interval")?)
            }
            "initial_delay" if kind == Kind::Timer => {
                o.initial_delay = Some(dur(&meta.value()?.parse()?)?)
            }
            "optional" if kind == Kind::Delete => o.optional = true,
            "value" if kind == Kind::Field => o.value = Some(meta.value()?.parse()?),
            "old" if kind == Kind::Field => o.old = Some(meta.value()?.parse()?),
            "new" if kind == Kind::Field => o.new = Some(meta.value()?.parse()?),
            "cancellation_timeout" if kind == Kind::Daemon => {
                o.cancellation_timeout = Some(dur(&meta.value()?.parse()?)?)
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown option `{name}`; expected one of id, retries, backoff_base, backoff_max, timeout, labels(..), annotations(..), when{}",
                    match kind {
                        Kind::Field => ", path, value, old, new",
                        Kind::Timer => ", interval, initial_delay",
                        Kind::Daemon => ", cancellation_timeout",
                        Kind::Delete => ", optional",
                        _ => "",
                    }
                )));
            }
        }
        Ok(())
    });
    parser.parse2(attr)?;
    let base = o.backoff_base.unwrap_or(DEFAULT_BACKOFF_BASE_MS);
    let max = o.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX_MS);
    if (o.backoff_base.is_some() || o.backoff_max.is_some()) && base > max {
        return Err(syn::Error::new(
            Span::call_site(),
            format!("backoff_base ({base} ms) must not be above backoff_max ({max} ms)"),
        ));
    }
    Ok(o)
}

/// The framework's default backoff (`Backoff::default()`), used when only
/// one of `backoff_base` and `backoff_max` is given.
const DEFAULT_BACKOFF_BASE_MS: u64 = 1_000;
const DEFAULT_BACKOFF_MAX_MS: u64 = 300_000;

fn resource_type(f: &ItemFn) -> syn::Result<Type> {
    let err = || {
        syn::Error::new_spanned(
            &f.sig,
            "a handler must be `async fn name(ctx: Context<K>) -> HandlerResult`",
        )
    };
    if f.sig.asyncness.is_none() || f.sig.inputs.len() != 1 {
        return Err(err());
    }
    let Some(FnArg::Typed(pt)) = f.sig.inputs.first() else {
        return Err(err());
    };
    let Type::Path(tp) = &*pt.ty else {
        return Err(err());
    };
    let Some(seg) = tp.path.segments.last() else {
        return Err(err());
    };
    if seg.ident != "Context" {
        return Err(err());
    }
    let PathArguments::AngleBracketed(args) = &seg.arguments else {
        return Err(err());
    };
    for a in &args.args {
        if let GenericArgument::Type(t) = a {
            return Ok(t.clone());
        }
    }
    Err(err())
}

fn expand(attr: TokenStream, item: TokenStream, kind: Kind) -> TokenStream {
    let f = parse_macro_input!(item as ItemFn);
    match expand_inner(attr, f, kind) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_inner(attr: TokenStream, f: ItemFn, kind: Kind) -> syn::Result<TokenStream2> {
    let o = parse_opts(attr.into(), kind)?;
    let k = resource_type(&f)?;
    let name = f.sig.ident.clone();
    let vis = f.vis.clone();
    let docs: Vec<_> = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    let other_attrs: Vec<_> = f
        .attrs
        .iter()
        .filter(|a| !a.path().is_ident("doc"))
        .cloned()
        .collect();
    let inner_name = format_ident!("__{}_handler", name);
    let mut inner = f.clone();
    inner.sig.ident = inner_name.clone();
    inner.vis = syn::Visibility::Inherited;
    inner.attrs = other_attrs;
    let id =
        o.id.clone()
            .unwrap_or_else(|| LitStr::new(&name.to_string(), Span::call_site()));
    let fw = quote!(::operator_framework);
    let kind_expr = match kind {
        Kind::Create => quote!(#fw::HandlerKind::Create),
        Kind::Update => quote!(#fw::HandlerKind::Update),
        Kind::Delete => quote!(#fw::HandlerKind::Delete),
        Kind::Resume => quote!(#fw::HandlerKind::Resume),
        Kind::Event => quote!(#fw::HandlerKind::Event),
        Kind::Daemon => {
            let t = o.cancellation_timeout.unwrap_or(10_000);
            quote!(#fw::HandlerKind::Daemon {
                cancellation_timeout: ::std::time::Duration::from_millis(#t),
            })
        }
        Kind::Field => {
            let Some(p) = &o.path else {
                return Err(syn::Error::new(
                    Span::call_site(),
                    "on_field needs `path = \"spec.some.field\"`",
                ));
            };
            quote!(#fw::HandlerKind::Field { path: ::std::string::String::from(#p) })
        }
        Kind::Timer => {
            let Some(i) = o.interval else {
                return Err(syn::Error::new(
                    Span::call_site(),
                    "on_timer needs `interval = \"60s\"`",
                ));
            };
            let d = o.initial_delay.unwrap_or(0);
            quote!(#fw::HandlerKind::Timer {
                interval: ::std::time::Duration::from_millis(#i),
                initial_delay: ::std::time::Duration::from_millis(#d),
            })
        }
    };
    let mut chain = TokenStream2::new();
    if let Some(r) = &o.retries {
        chain.extend(quote!(.retries(#r)));
    }
    if o.backoff_base.is_some() || o.backoff_max.is_some() {
        let b = o.backoff_base.unwrap_or(DEFAULT_BACKOFF_BASE_MS);
        let m = o.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX_MS);
        chain.extend(quote!(.backoff(
            ::std::time::Duration::from_millis(#b),
            ::std::time::Duration::from_millis(#m)
        )));
    }
    if let Some(t) = o.timeout {
        chain.extend(quote!(.timeout(::std::time::Duration::from_millis(#t))));
    }
    for l in &o.labels {
        chain.extend(quote!(.label(#l)));
    }
    for a in &o.annotations {
        chain.extend(quote!(.annotation(#a)));
    }
    if let Some(w) = &o.when {
        chain.extend(quote!(.when(#w)));
    }
    if o.optional {
        chain.extend(quote!(.optional()));
    }
    if let Some(v) = &o.value {
        chain.extend(quote!(.value(#v)));
    }
    if let Some(v) = &o.old {
        chain.extend(quote!(.old(#v)));
    }
    if let Some(v) = &o.new {
        chain.extend(quote!(.new_value(#v)));
    }
    Ok(quote! {
        #(#docs)*
        #vis fn #name() -> #fw::Handler<#k> {
            #inner
            #fw::Handler::<#k>::new(#kind_expr, #id, #inner_name) #chain
        }
    })
}

/// Marks `async fn(ctx: Context<K>) -> HandlerResult` as a create handler;
/// the function becomes `fn() -> Handler<K>`. See the crate docs for options.
#[proc_macro_attribute]
pub fn on_create(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Create)
}

/// Marks an update handler (runs once per change of the object's essence).
#[proc_macro_attribute]
pub fn on_update(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Update)
}

/// Marks a delete handler (the framework keeps its finalizer on the objects
/// this handler's filters match, and only on them). `#[on_delete(optional)]`
/// puts no finalizer (see `Handler::optional`).
#[proc_macro_attribute]
pub fn on_delete(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Delete)
}

/// Marks a resume handler (runs for existing objects when the operator starts).
#[proc_macro_attribute]
pub fn on_resume(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Resume)
}

/// Marks a field-change handler: `#[on_field(path = "spec.schedule")]`.
#[proc_macro_attribute]
pub fn on_field(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Field)
}

/// Marks a timer: `#[on_timer(interval = "60s", initial_delay = "5s")]`.
/// Failed runs are retried with the handler's backoff (`backoff_base`,
/// `backoff_max`) instead of the interval; a permanent error (or more than
/// `retries` failures in a row) stops the timer for that object until its
/// spec changes.
#[proc_macro_attribute]
pub fn on_timer(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Timer)
}

/// Marks a level-triggered event handler (every watch event, child change
/// and resync: `ctx.watch_event` is `Some(WatchEventType::Applied)`), which
/// also runs once, without retries, when the object was deleted from the API
/// (`Some(WatchEventType::Deleted)`, with the last known object).
#[proc_macro_attribute]
pub fn on_event(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Event)
}

/// Marks a daemon: one long-running task per matching object, cancelled
/// when the object is deleted or stops matching and on shutdown (watch
/// `ctx.cancelled()`); restarted with backoff after a retryable error.
/// Option: `cancellation_timeout = "10s"` (then the task is aborted). See
/// `Handler::daemon` for the exact rules.
#[proc_macro_attribute]
pub fn daemon(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, Kind::Daemon)
}

/// The kind from `AdmissionRequest<K>` in a webhook function's signature.
fn admission_type(f: &ItemFn) -> syn::Result<Type> {
    let err = || {
        syn::Error::new_spanned(
            &f.sig,
            "a webhook must be `async fn name(req: AdmissionRequest<K>) -> Validation` (or `-> Mutation<K>`)",
        )
    };
    if f.sig.asyncness.is_none() || f.sig.inputs.len() != 1 {
        return Err(err());
    }
    let Some(FnArg::Typed(pt)) = f.sig.inputs.first() else {
        return Err(err());
    };
    let Type::Path(tp) = &*pt.ty else {
        return Err(err());
    };
    let Some(seg) = tp.path.segments.last() else {
        return Err(err());
    };
    let PathArguments::AngleBracketed(args) = &seg.arguments else {
        return Err(err());
    };
    if seg.ident != "AdmissionRequest" {
        return Err(err());
    }
    args.args
        .iter()
        .find_map(|a| match a {
            GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        })
        .ok_or_else(err)
}

fn expand_webhook(attr: TokenStream, item: TokenStream, mutating: bool) -> TokenStream {
    let f = parse_macro_input!(item as ItemFn);
    let run = || -> syn::Result<TokenStream2> {
        let mut id: Option<LitStr> = None;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("id") {
                id = Some(non_empty(meta.value()?.parse()?, "id")?);
                Ok(())
            } else {
                Err(meta.error("unknown option; expected `id`"))
            }
        });
        parser.parse2(attr.into())?;
        let k = admission_type(&f)?;
        let name = f.sig.ident.clone();
        let id = id
            .unwrap_or_else(|| LitStr::new(&name.to_string().replace('_', "-"), Span::call_site()));
        let docs: Vec<_> = f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect();
        let inner_name = format_ident!("__{}_webhook", name);
        let mut inner = f.clone();
        inner.sig.ident = inner_name.clone();
        inner.vis = syn::Visibility::Inherited;
        inner.attrs.retain(|a| !a.path().is_ident("doc"));
        let vis = f.vis.clone();
        let ctor = if mutating {
            quote!(mutating)
        } else {
            quote!(validating)
        };
        Ok(quote! {
            #(#docs)*
            #vis fn #name() -> ::operator_framework::Webhook<#k> {
                #inner
                ::operator_framework::Webhook::<#k>::#ctor(#id, #inner_name)
            }
        })
    };
    match run() {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Marks `async fn(req: AdmissionRequest<K>) -> Validation` as a validating
/// admission webhook; the function becomes `fn() -> Webhook<K>` (register
/// with `Controller::webhook`). Option: `id` (default: the function name
/// with `-` for `_`).
#[proc_macro_attribute]
pub fn on_validate(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_webhook(attr, item, false)
}

/// Marks `async fn(req: AdmissionRequest<K>) -> Mutation<K>` as a mutating
/// admission webhook; the function becomes `fn() -> Webhook<K>`.
#[proc_macro_attribute]
pub fn on_mutate(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_webhook(attr, item, true)
}

#[cfg(test)]
mod tests {
    use super::{Kind, parse_duration_ms, parse_opts};
    use quote::quote;

    fn error(attr: proc_macro2::TokenStream, kind: Kind) -> String {
        match parse_opts(attr, kind) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn zero_durations_and_empty_names_are_compile_errors() {
        let cases = [
            (
                quote!(interval = "0s"),
                Kind::Timer,
                "interval must be above zero",
            ),
            (
                quote!(interval = "0ms"),
                Kind::Timer,
                "interval must be above zero",
            ),
            (
                quote!(backoff_base = "0s"),
                Kind::Create,
                "backoff_base must be above zero",
            ),
            (
                quote!(backoff_max = "0s"),
                Kind::Update,
                "backoff_max must be above zero",
            ),
            (
                quote!(timeout = "0s"),
                Kind::Delete,
                "timeout must be above zero",
            ),
            (quote!(id = ""), Kind::Create, "id must not be empty"),
            (quote!(path = " "), Kind::Field, "path must not be empty"),
            (
                quote!(backoff_base = "10s", backoff_max = "1s"),
                Kind::Create,
                "must not be above backoff_max",
            ),
            (
                quote!(backoff_base = "10m"),
                Kind::Create,
                "must not be above backoff_max",
            ),
        ];
        let only_for = [
            (quote!(optional), Kind::Create, "unknown option `optional`"),
            (
                quote!(cancellation_timeout = "1s"),
                Kind::Timer,
                "unknown option",
            ),
        ];
        for (attr, kind, want) in cases.into_iter().chain(only_for) {
            let got = error(attr.clone(), kind);
            assert!(got.contains(want), "`{attr}`: {got}");
        }
        for (attr, kind) in [
            (quote!(interval = "1ms", initial_delay = "0s"), Kind::Timer),
            (
                quote!(backoff_base = "1s", backoff_max = "1s", timeout = "1h"),
                Kind::Create,
            ),
            (quote!(id = "x", retries = 0), Kind::Event),
            (quote!(optional, labels("a")), Kind::Delete),
            (
                quote!(path = "spec.a", old = "x", new = 3, value = true),
                Kind::Field,
            ),
            (quote!(cancellation_timeout = "0s"), Kind::Daemon),
        ] {
            assert_eq!(error(attr.clone(), kind), "accepted", "`{attr}`");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1s"), Ok(1_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2d"), Ok(172_800_000));
        assert!(parse_duration_ms("10").is_err());
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("").is_err());
    }
}
