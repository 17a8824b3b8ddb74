//! Parsing and expansion of `#[flame::service]`.

use crate::case;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use std::collections::{HashMap, HashSet};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{
    parse_quote, parse_quote_spanned, Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitInt, LitStr,
    Pat, Path, PathArguments, ReturnType, TraitItem, TraitItemFn, Type, TypeParamBound,
};

/// Client method names the generated client already uses.
const RESERVED_CLIENT_NAMES: &[&str] = &["new", "with_options", "options"];

/// Collects errors so one expansion reports every problem it finds, each at its own span.
#[derive(Default)]
struct Errors(Option<syn::Error>, usize);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        self.1 += 1;
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    /// An error spanning every token of `tokens` (first to last, also on stable).
    fn spanned(&mut self, tokens: impl quote::ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// The arguments of `#[flame::service(...)]`.
struct ServiceArgs {
    id: Option<LitStr>,
    krate: Option<Path>,
}

fn parse_service_args(attr: TokenStream) -> syn::Result<ServiceArgs> {
    let mut args = ServiceArgs {
        id: None,
        krate: None,
    };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("id") {
            if args.id.is_some() {
                return Err(meta.error("`id` is given twice"));
            }
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().is_empty() {
                return Err(syn::Error::new(lit.span(), "the service id must not be empty"));
            }
            args.id = Some(lit);
            Ok(())
        } else if meta.path.is_ident("crate") {
            if args.krate.is_some() {
                return Err(meta.error("`crate` is given twice"));
            }
            let lit: LitStr = meta.value()?.parse()?;
            args.krate = Some(lit.parse()?);
            Ok(())
        } else {
            Err(meta
                .error("unknown `#[flame::service]` argument: expected `id = \"...\"` or `crate = \"...\"`"))
        }
    });
    parser.parse2(attr)?;
    Ok(args)
}

/// The options of one method, from `#[flame(id = "...", pool = "...", timeout_ms = ...,
/// retries = ..., max_request_bytes = ..., max_response_bytes = ...)]`.
#[derive(Default)]
struct MethodArgs {
    id: Option<LitStr>,
    pool: Option<LitStr>,
    timeout_ms: Option<LitInt>,
    retries: Option<LitInt>,
    max_request_bytes: Option<LitInt>,
    max_response_bytes: Option<LitInt>,
}

fn is_flame_attr(attr: &Attribute) -> bool {
    attr.path().is_ident("flame")
}

fn parse_method_args(attrs: &[Attribute], errors: &mut Errors) -> MethodArgs {
    let mut args = MethodArgs::default();
    for attr in attrs.iter().filter(|a| is_flame_attr(a)) {
        let result = attr.parse_nested_meta(|meta| {
            let twice = |set: bool| {
                if set {
                    Err(meta.error("this option is given twice"))
                } else {
                    Ok(())
                }
            };
            if meta.path.is_ident("id") {
                twice(args.id.is_some())?;
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "a method id must not be empty"));
                }
                args.id = Some(lit);
            } else if meta.path.is_ident("pool") {
                twice(args.pool.is_some())?;
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "a pool name must not be empty"));
                }
                args.pool = Some(lit);
            } else if meta.path.is_ident("timeout_ms") {
                twice(args.timeout_ms.is_some())?;
                let lit: LitInt = meta.value()?.parse()?;
                match lit.base10_parse::<u64>() {
                    Ok(0) => {
                        return Err(syn::Error::new(lit.span(), "`timeout_ms` must be above 0"))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`timeout_ms` is a whole number of milliseconds (u64)",
                        ))
                    }
                }
                args.timeout_ms = Some(lit);
            } else if meta.path.is_ident("retries") {
                twice(args.retries.is_some())?;
                let lit: LitInt = meta.value()?.parse()?;
                if lit.base10_parse::<u32>().is_err() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`retries` is a whole number of retries after the first attempt (u32)",
                    ));
                }
                args.retries = Some(lit);
            } else if meta.path.is_ident("max_request_bytes") || meta.path.is_ident("max_response_bytes") {
                let request = meta.path.is_ident("max_request_bytes");
                twice(if request {
                    args.max_request_bytes.is_some()
                } else {
                    args.max_response_bytes.is_some()
                })?;
                let lit: LitInt = meta.value()?.parse()?;
                match lit.base10_parse::<u64>() {
                    Ok(0) => return Err(syn::Error::new(lit.span(), "a size limit must be above 0")),
                    Ok(_) => {}
                    Err(_) => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "a size limit is a whole number of bytes (u64), e.g. `64 << 20` written out: `67108864`",
                        ))
                    }
                }
                if request {
                    args.max_request_bytes = Some(lit);
                } else {
                    args.max_response_bytes = Some(lit);
                }
            } else {
                return Err(meta.error(
                    "unknown `#[flame]` option: expected `id = \"...\"`, `pool = \"...\"`, `timeout_ms = N`, `retries = N`, `max_request_bytes = N` or `max_response_bytes = N`",
                ));
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    args
}

/// Rejects types the wire cannot carry as one concrete, owned value.
struct WireTypeCheck<'e> {
    errors: &'e mut Errors,
}

impl<'ast> Visit<'ast> for WireTypeCheck<'_> {
    fn visit_type_reference(&mut self, t: &'ast syn::TypeReference) {
        self.errors.spanned(
            t,
            "flame service arguments and results travel on the wire and must be owned: \
             take `String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`",
        );
    }

    fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
        self.errors.spanned(
            t,
            "`impl Trait` cannot travel on the wire: a flame service method takes and returns \
             concrete types that both ends agree on",
        );
    }

    fn visit_type_trait_object(&mut self, t: &'ast syn::TypeTraitObject) {
        self.errors.spanned(
            t,
            "trait objects cannot travel on the wire: use a concrete (serde) type",
        );
    }

    fn visit_type_bare_fn(&mut self, t: &'ast syn::TypeBareFn) {
        self.errors
            .spanned(t, "function pointers cannot travel on the wire");
    }

    fn visit_type_path(&mut self, t: &'ast syn::TypePath) {
        if t.qself.is_none() && t.path.segments.first().is_some_and(|s| s.ident == "Self") {
            self.errors.spanned(
                t,
                "`Self` names the implementing type, which the caller does not know: \
                 use a concrete type",
            );
            return;
        }
        visit::visit_type_path(self, t);
    }
}

fn check_wire_type(ty: &Type, errors: &mut Errors) {
    WireTypeCheck { errors }.visit_type(ty);
}

/// The generic arguments of `Result<T, E>` / `flame::Result<T>`.
fn result_args(ty: &Type) -> Option<&syn::punctuated::Punctuated<GenericArgument, syn::Token![,]>> {
    let Type::Path(p) = ty else {
        return None;
    };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    Some(&args.args)
}

/// `T` of `ItemStream<T>` (a streaming method's `Result<ItemStream<T>>`).
fn item_stream_type(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else {
        return None;
    };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "ItemStream" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) if args.args.len() == 1 => Some(t),
        _ => None,
    }
}

/// `T` of `Result<T, E>` / `flame::Result<T>`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    match result_args(ty)?.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

/// Where `E` of `Result<T, E>` is written, or the whole type where it is implied.
fn result_err_span(ty: &Type) -> Span {
    match result_args(ty).and_then(|a| a.iter().nth(1)) {
        Some(GenericArgument::Type(e)) => e.span(),
        _ => ty.span(),
    }
}

/// Whether `ty` names the call context (`Context`, `flame::Context`, ...).
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Context" && s.arguments.is_none()),
        Type::Paren(p) => is_context(&p.elem),
        Type::Group(g) => is_context(&g.elem),
        _ => false,
    }
}

/// One method of the service, checked.
struct MethodDef {
    ident: Ident,
    const_ident: Ident,
    id: String,
    pool: Option<LitStr>,
    timeout_ms: Option<LitInt>,
    retries: Option<LitInt>,
    max_request_bytes: Option<LitInt>,
    max_response_bytes: Option<LitInt>,
    takes_ctx: bool,
    /// Client-side parameter names and the wire argument types, in order.
    args: Vec<(Ident, Type)>,
    /// `T` (a streaming method: the item type).
    resp: Type,
    /// Returns `Result<ItemStream<T>>`: a stream of `T`s.
    streaming: bool,
    /// Where to report an error type that does not convert into `flame::Error`.
    err_span: Span,
    docs: Vec<Attribute>,
}

fn check_method(f: &TraitItemFn, errors: &mut Errors) -> Option<MethodDef> {
    let sig = &f.sig;
    let start = errors.1;
    if sig.asyncness.is_none() {
        errors.spanned(
            sig,
            "flame service methods must be `async fn`: every call may cross the network",
        );
    }
    if let Some(c) = &sig.constness {
        errors.at(c.span, "flame service methods cannot be `const`");
    }
    if let Some(u) = &sig.unsafety {
        errors.at(u.span, "flame service methods cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "flame service methods cannot declare an ABI");
    }
    if let Some(v) = &sig.variadic {
        errors.spanned(v, "flame service methods cannot be variadic");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "flame service methods cannot be generic: the wire carries one concrete request \
             and response type, and parent and runner must agree on them",
        );
    }
    if let Some(w) = &sig.generics.where_clause {
        errors.spanned(
            w,
            "flame service methods cannot have a `where` clause: use concrete types",
        );
    }

    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(FnArg::Receiver(r)) => errors.spanned(
            r,
            "flame service methods take `&self`: one instance serves concurrent calls",
        ),
        _ => errors.spanned(
            &sig.ident,
            "flame service methods take `&self` as their first parameter",
        ),
    }

    let mut takes_ctx = false;
    let mut args: Vec<(Option<Ident>, Type)> = Vec::new();
    for (i, input) in inputs.enumerate() {
        let FnArg::Typed(pt) = input else {
            continue;
        };
        let ty = &*pt.ty;
        if let Type::Reference(r) = ty {
            if is_context(&r.elem) {
                errors.spanned(
                    ty,
                    "take the context by value: `ctx: flame::Context` (it is cheap to clone)",
                );
                continue;
            }
        }
        if is_context(ty) {
            if i == 0 {
                takes_ctx = true;
            } else {
                errors.spanned(ty, "the call context must be the first parameter after `&self`");
            }
            continue;
        }
        check_wire_type(ty, errors);
        let name = match &*pt.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() && p.ident != "self" => {
                Some(p.ident.clone())
            }
            _ => None,
        };
        args.push((name, ty.clone()));
    }
    // Client parameter names: the trait's own where it names them plainly, `argN` otherwise.
    let taken: HashSet<String> = args
        .iter()
        .filter_map(|(n, _)| n.as_ref().map(|n| n.to_string()))
        .collect();
    let args: Vec<(Ident, Type)> = args
        .into_iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            let name = name.unwrap_or_else(|| {
                let plain = format!("arg{i}");
                if taken.contains(&plain) {
                    format_ident!("__flame_arg{}", i)
                } else {
                    format_ident!("arg{}", i)
                }
            });
            (name, ty)
        })
        .collect();

    let (resp, err_span, streaming) = match &sig.output {
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => {
                let (resp, streaming) = match item_stream_type(ok) {
                    Some(item) => (item, true),
                    None => (ok, false),
                };
                check_wire_type(resp, errors);
                (resp.clone(), result_err_span(ty), streaming)
            }
            None => {
                errors.spanned(
                    ty,
                    "flame service methods return `Result<T, flame::Error>` (or `flame::Result<T>`): \
                     a call can fail on the way",
                );
                return None;
            }
        },
        ReturnType::Default => {
            errors.spanned(
                sig,
                "flame service methods return `Result<T, flame::Error>` (or `flame::Result<T>`): \
                 a call can fail on the way",
            );
            return None;
        }
    };

    let opts = parse_method_args(&f.attrs, errors);
    let name = syn::ext::IdentExt::unraw(&sig.ident).to_string();
    if RESERVED_CLIENT_NAMES.contains(&name.as_str()) {
        errors.spanned(
            &sig.ident,
            format!(
                "`{name}` is taken by the generated client (`new`, `with_options`, `options`): \
                 name the method otherwise and keep the wire id with `#[flame(id = \"{name}\")]`"
            ),
        );
    }
    let id = opts.id.as_ref().map_or_else(|| name.clone(), LitStr::value);
    if errors.1 > start {
        return None;
    }
    Some(MethodDef {
        const_ident: Ident::new(&case::screaming(&name), sig.ident.span()),
        ident: sig.ident.clone(),
        id,
        pool: opts.pool,
        timeout_ms: opts.timeout_ms,
        retries: opts.retries,
        max_request_bytes: opts.max_request_bytes,
        max_response_bytes: opts.max_response_bytes,
        takes_ctx,
        args,
        resp,
        streaming,
        err_span,
        docs: f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
    })
}

/// Where a method's id was written, for the duplicate-id error.
fn id_span(f: &TraitItemFn) -> Span {
    for attr in f.attrs.iter().filter(|a| is_flame_attr(a)) {
        let mut span = None;
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("id") {
                let lit: LitStr = meta.value()?.parse()?;
                span = Some(lit.span());
            } else if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
        if let Some(span) = span {
            return span;
        }
    }
    f.sig.ident.span()
}

/// Expands `#[flame::service(attr)] item`.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = parse_service_args(attr)?;
    let mut item: ItemTrait = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "`#[flame::service]` goes on a trait of `async fn` methods",
        )
    })?;
    let krate: Path = args.krate.unwrap_or_else(|| parse_quote!(::flame));
    let trait_ident = item.ident.clone();
    let trait_name = syn::ext::IdentExt::unraw(&trait_ident).to_string();
    let service_id = args
        .id
        .as_ref()
        .map_or_else(|| case::snake(&trait_name), LitStr::value);

    let mut errors = Errors::default();
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "a flame service trait cannot be generic: parent and runner must agree on concrete \
             request and response types",
        );
    }
    if let Some(w) = &item.generics.where_clause {
        errors.spanned(w, "a flame service trait cannot have a `where` clause");
    }
    if let Some(u) = &item.unsafety {
        errors.at(u.span, "a flame service trait cannot be `unsafe`");
    }
    if let Some(a) = &item.auto_token {
        errors.at(a.span, "a flame service trait cannot be an auto trait");
    }

    let mut methods: Vec<MethodDef> = Vec::new();
    let mut ids: HashMap<String, Ident> = HashMap::new();
    let mut consts: HashMap<String, Ident> = HashMap::new();
    for it in &item.items {
        let TraitItem::Fn(f) = it else {
            errors.spanned(
                it,
                "a flame service trait holds only `async fn` methods (no associated types, \
                 consts or macros)",
            );
            continue;
        };
        let Some(m) = check_method(f, &mut errors) else {
            continue;
        };
        if let Some(first) = ids.get(&m.id) {
            errors.at(
                id_span(f),
                format!(
                    "duplicate method id `{}` in service `{service_id}`: `{}` already uses it \
                     (set another with `#[flame(id = \"...\")]`)",
                    m.id, first
                ),
            );
            continue;
        }
        let const_name = m.const_ident.to_string();
        if const_name == "SERVICE_ID" {
            errors.spanned(
                &m.ident,
                "a method named `service_id` would clash with the generated `SERVICE_ID` const: \
                 name it otherwise and keep the wire id with `#[flame(id = \"service_id\")]`",
            );
            continue;
        }
        if let Some(first) = consts.get(&const_name) {
            errors.spanned(
                &m.ident,
                format!(
                    "`{}` and `{}` would both generate the const `{const_name}`: rename one",
                    first, m.ident
                ),
            );
            continue;
        }
        ids.insert(m.id.clone(), m.ident.clone());
        consts.insert(const_name, m.ident.clone());
        methods.push(m);
    }
    errors.finish()?;

    // The trait itself: async fns become `fn -> impl Future + Send`, so handlers can run on any
    // task; a plain `async fn` in the impl satisfies it.
    let span = Span::call_site();
    item.colon_token.get_or_insert_with(Default::default);
    item.supertraits
        .push(TypeParamBound::Trait(parse_quote!(::core::marker::Send)));
    item.supertraits
        .push(TypeParamBound::Trait(parse_quote!(::core::marker::Sync)));
    item.supertraits
        .push(TypeParamBound::Lifetime(syn::Lifetime::new("'static", span)));
    for it in &mut item.items {
        let TraitItem::Fn(f) = it else { continue };
        f.attrs.retain(|a| !is_flame_attr(a));
        f.sig.asyncness = None;
        let ReturnType::Type(_, ty) = &f.sig.output else {
            continue;
        };
        let ret = (**ty).clone();
        f.sig.output = parse_quote_spanned_output(&ret);
        if let Some(block) = f.default.take() {
            f.default = Some(parse_quote!({ async move #block }));
        }
    }

    let vis = &item.vis;
    let client_ident = format_ident!("{}Client", trait_name);
    let service_ident = format_ident!("{}Service", trait_name);
    let impl_ty = format_ident!("__FlameImpl");

    let consts_tokens = methods.iter().map(|m| {
        let MethodDef {
            ident,
            const_ident,
            id,
            pool,
            timeout_ms,
            retries,
            max_request_bytes,
            max_response_bytes,
            args,
            resp,
            streaming,
            ..
        } = m;
        let tys = args.iter().map(|(_, t)| t);
        let pool = pool.as_ref().map(|p| quote!(.with_pool(#p)));
        let timeout = timeout_ms.as_ref().map(|t| quote!(.with_timeout_ms(#t)));
        let retry = retries
            .as_ref()
            .map(|n| quote!(.with_retry(#krate::RetryPolicy::attempts(1 + #n))));
        let max_request = max_request_bytes
            .as_ref()
            .map(|n| quote!(.with_max_request_bytes(#n)));
        let max_response = max_response_bytes
            .as_ref()
            .map(|n| quote!(.with_max_response_bytes(#n)));
        let (resp_ty, how) = if *streaming {
            (quote!(#krate::Streamed<#resp>), "`Flame::call_stream`")
        } else {
            (quote!(#resp), "`Flame::call`")
        };
        let doc = format!(
            "`{service_id}`/`{id}`: the typed method handle of [`{trait_name}::{ident}`], usable \
             with {how} like any hand-written `Method`."
        );
        quote! {
            #[doc = #doc]
            #vis const #const_ident: #krate::Method<(#(#tys,)*), #resp_ty> =
                #krate::Method::new(Self::SERVICE_ID, #id) #pool #timeout #retry #max_request #max_response;
        }
    });

    let handlers = methods.iter().map(|m| {
        let MethodDef {
            ident,
            const_ident,
            takes_ctx,
            args,
            err_span,
            streaming,
            resp,
            ..
        } = m;
        let pats: Vec<Ident> = (0..args.len())
            .map(|i| format_ident!("__flame_arg{}", i))
            .collect();
        let tys = args.iter().map(|(_, t)| t);
        let (ctx_pat, ctx_arg) = if *takes_ctx {
            (quote!(__flame_ctx), quote!(__flame_ctx,))
        } else {
            (quote!(_), quote!())
        };
        let into_error = quote_spanned! {*err_span=>
            into_error(error)
        };
        if *streaming {
            return quote! {
                let registry = registry.handle_stream(Self::#const_ident, {
                    let service = ::std::sync::Arc::clone(&service);
                    move |#ctx_pat: #krate::Context, (#(#pats,)*): (#(#tys,)*)| {
                        let service = ::std::sync::Arc::clone(&service);
                        #krate::Streamed::<#resp>::flatten(async move {
                            match <#impl_ty as #trait_ident>::#ident(&*service, #ctx_arg #(#pats),*).await {
                                ::core::result::Result::Ok(items) => ::core::result::Result::Ok(items),
                                ::core::result::Result::Err(error) => ::core::result::Result::Err(#into_error),
                            }
                        })
                    }
                });
            };
        }
        quote! {
            let registry = registry.handle(Self::#const_ident, {
                let service = ::std::sync::Arc::clone(&service);
                move |#ctx_pat: #krate::Context, (#(#pats,)*): (#(#tys,)*)| {
                    let service = ::std::sync::Arc::clone(&service);
                    async move {
                        match <#impl_ty as #trait_ident>::#ident(&*service, #ctx_arg #(#pats),*).await {
                            ::core::result::Result::Ok(value) => ::core::result::Result::Ok(value),
                            ::core::result::Result::Err(error) => ::core::result::Result::Err(#into_error),
                        }
                    }
                }
            });
        }
    });

    let client_methods = methods.iter().map(|m| {
        let MethodDef {
            ident,
            const_ident,
            args,
            resp,
            docs,
            streaming,
            ..
        } = m;
        let names: Vec<&Ident> = args.iter().map(|(n, _)| n).collect();
        let tys: Vec<&Type> = args.iter().map(|(_, t)| t).collect();
        if *streaming {
            let stream_doc = "Its items arrive as the handler yields them (see `Flame::call_stream`): \
                              dropping the stream cancels the call.";
            return quote! {
                #(#docs)*
                #[doc = ""]
                #[doc = #stream_doc]
                #vis fn #ident(&self, #(#names: #tys),*) -> #krate::CallStream<#resp> {
                    self.flame.call_stream_with(
                        #service_ident::#const_ident,
                        (#(#names,)*),
                        ::core::clone::Clone::clone(&self.options),
                    )
                }
            };
        }
        let spawn_ident = format_ident!("spawn_{}", ident);
        let spawn_doc = format!(
            "Starts [`Self::{ident}`] in the background and returns its `CallHandle` at once \
             (join it, cancel it, or detach it: see `Flame::spawn`)."
        );
        quote! {
            #(#docs)*
            #vis async fn #ident(&self, #(#names: #tys),*) -> #krate::Result<#resp> {
                self.flame
                    .call_with(
                        #service_ident::#const_ident,
                        (#(#names,)*),
                        ::core::clone::Clone::clone(&self.options),
                    )
                    .await
            }

            #[doc = #spawn_doc]
            #vis fn #spawn_ident(&self, #(#names: #tys),*) -> #krate::CallHandle<#resp> {
                self.flame.spawn_with(
                    #service_ident::#const_ident,
                    (#(#names,)*),
                    ::core::clone::Clone::clone(&self.options),
                )
            }
        }
    });

    let pairs = methods.iter().map(|m| {
        let id = &m.id;
        quote!((Self::SERVICE_ID, #id))
    });
    let method_count = methods.len();

    let service_doc = format!(
        "The ids, typed method handles and registration of the [`{trait_name}`] flame service \
         (service id `{service_id}`), generated by `#[flame::service]`."
    );
    let service_id_doc = format!("The service id on the wire: `{service_id}`.");
    let methods_doc = "Every `(service_id, method_id)` this service serves, in declaration order.";
    let registry_doc = format!(
        "A registry serving only `service`, an implementation of [`{trait_name}`]; merge it into \
         another with `Registry::merge`."
    );
    let register_doc = format!(
        "Adds every method of `service` (an implementation of [`{trait_name}`]) to `registry`. \
         Ids that are already registered are reported by `Registry::check` (and so by \
         `Flame::start`), as with `Registry::handle`."
    );
    let try_register_doc = format!(
        "Adds every method of `service` (an implementation of [`{trait_name}`]) to `registry`, \
         or fails with a `CONFIG` error, changing nothing, if any of its ids is already \
         registered."
    );
    let client_doc = format!(
        "A typed client of the [`{trait_name}`] flame service (service id `{service_id}`), \
         generated by `#[flame::service]`: each method calls through a `Flame` handle (local, \
         parent or runner mode alike) and returns `flame::Result<T>`."
    );

    Ok(quote! {
        #item

        #[doc = #service_doc]
        #[allow(dead_code)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #service_ident;

        #[allow(dead_code)]
        impl #service_ident {
            #[doc = #service_id_doc]
            #vis const SERVICE_ID: &'static str = #service_id;

            #(#consts_tokens)*

            #[doc = #methods_doc]
            #vis const METHODS: [(&'static str, &'static str); #method_count] = [#(#pairs),*];

            #[doc = #registry_doc]
            #vis fn registry<#impl_ty: #trait_ident>(service: #impl_ty) -> #krate::Registry {
                /// A handler's error type converts into `flame::Error`.
                fn into_error<E: ::core::convert::Into<#krate::Error>>(error: E) -> #krate::Error {
                    ::core::convert::Into::into(error)
                }
                let service = ::std::sync::Arc::new(service);
                let registry = #krate::Registry::new();
                #(#handlers)*
                let _ = service;
                registry
            }

            #[doc = #register_doc]
            #vis fn register<#impl_ty: #trait_ident>(
                registry: #krate::Registry,
                service: #impl_ty,
            ) -> #krate::Registry {
                registry.merge(Self::registry(service))
            }

            #[doc = #try_register_doc]
            #vis fn try_register<#impl_ty: #trait_ident>(
                registry: &mut #krate::Registry,
                service: #impl_ty,
            ) -> #krate::Result<()> {
                for (service_id, method_id) in Self::METHODS {
                    if registry.contains(service_id, method_id) {
                        return ::core::result::Result::Err(#krate::Error::config(
                            ::std::format!("method {service_id}/{method_id} is registered twice"),
                        ));
                    }
                }
                let taken = ::core::mem::take(registry);
                *registry = taken.merge(Self::registry(service));
                ::core::result::Result::Ok(())
            }
        }

        #[doc = #client_doc]
        #[allow(dead_code)]
        #[derive(Clone)]
        #vis struct #client_ident {
            flame: #krate::Flame,
            options: #krate::CallOptions,
        }

        #[allow(dead_code)]
        impl #client_ident {
            /// A client that calls through `flame` with default options.
            #vis fn new(flame: #krate::Flame) -> Self {
                Self { flame, options: #krate::CallOptions::new() }
            }

            /// The same client, with `options` (pool, timeout, idempotency key, retries, trace)
            /// applied to every call it makes; they override the method's own pool and timeout.
            #vis fn with_options(mut self, options: #krate::CallOptions) -> Self {
                self.options = options;
                self
            }

            /// The options applied to every call.
            #vis fn options(&self) -> &#krate::CallOptions {
                &self.options
            }

            #(#client_methods)*
        }

        impl ::core::fmt::Debug for #client_ident {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#client_ident))
                    .field("service", &#service_ident::SERVICE_ID)
                    .field("options", &self.options)
                    .finish()
            }
        }
    })
}

/// `-> impl Future<Output = ret> + Send`, spanned at the declared return type.
fn parse_quote_spanned_output(ret: &Type) -> ReturnType {
    let span = ret.span();
    parse_quote_spanned! {span=>
        -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send
    }
}

/// The trait as written, minus the `#[flame]` helper attributes: emitted beside compile errors
/// so that code using the trait does not add errors of its own.
pub(crate) fn fallback(item: TokenStream) -> TokenStream {
    let Ok(mut item) = syn::parse2::<ItemTrait>(item) else {
        return TokenStream::new();
    };
    for it in &mut item.items {
        if let TraitItem::Fn(f) = it {
            f.attrs.retain(|a| !is_flame_attr(a));
        }
    }
    quote!(#item)
}
