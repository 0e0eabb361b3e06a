//! Fleet's attribute macros.
//!
//! - `#[fleet::remote]` on a function keeps the function and adds a module of the same name
//!   with `remote(args…) -> ObjectRef<R>` and `options()`; it registers the function by its
//!   path so a worker (the same binary) finds it.
//! - `#[fleet::actor]` on a struct (optionally `#[fleet::actor(checkpoint)]`) generates its
//!   typed handle `{Type}Handle`; on the struct's `impl` block it generates
//!   `Type::remote(ctor args…) -> ActorBuilder`, one handle method per `pub fn` taking
//!   `&self`/`&mut self`, and the dispatcher the worker runs.
//! - `#[fleet::main]` on `async fn main()` starts a runtime, calls `fleet::init()` first, and
//!   shuts the embedded cluster down at the end.
//!
//! A method or function returning `Result<T, E>` (E: Display) yields `ObjectRef<T>`; an `Err`
//! reaches the caller as `fleet::Error::Task` with the message.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, GenericArgument, ImplItem, ItemFn, ItemImpl, ItemStruct, Pat,
    PathArguments, ReturnType, Type,
};

/// What a function returns, as seen by the caller.
struct Returns {
    /// The `T` of `ObjectRef<T>`.
    value: TokenStream2,
    /// Whether it is a `Result` whose `Err` becomes an application error.
    fallible: bool,
}

fn returns(output: &ReturnType) -> Returns {
    match output {
        ReturnType::Default => Returns {
            value: quote!(()),
            fallible: false,
        },
        ReturnType::Type(_, ty) => {
            if let Type::Path(path) = ty.as_ref() {
                if let Some(last) = path.path.segments.last() {
                    if last.ident == "Result" {
                        if let PathArguments::AngleBracketed(args) = &last.arguments {
                            let ok = args.args.iter().find_map(|a| match a {
                                GenericArgument::Type(t) => Some(t),
                                _ => None,
                            });
                            if let Some(ok) = ok {
                                return Returns {
                                    value: quote!(#ok),
                                    fallible: true,
                                };
                            }
                        }
                    }
                }
            }
            Returns {
                value: quote!(#ty),
                fallible: false,
            }
        }
    }
}

/// Typed, named arguments of a signature (receiver excluded).
fn arguments(
    inputs: &syn::punctuated::Punctuated<FnArg, syn::token::Comma>,
) -> syn::Result<Vec<(syn::Ident, Type)>> {
    let mut out = Vec::new();
    for input in inputs {
        if let FnArg::Typed(typed) = input {
            let Pat::Ident(ident) = typed.pat.as_ref() else {
                return Err(syn::Error::new(
                    typed.pat.span(),
                    "fleet: arguments of remote functions and actor methods must be plain names",
                ));
            };
            out.push((ident.ident.clone(), (*typed.ty).clone()));
        }
    }
    Ok(out)
}

/// The `T` of a `fleet::Emitter<T>` parameter (a streaming function's item type).
fn emitter_item(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Emitter" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    })
}

/// The `T` of a returned `impl Stream<Item = T>` (a streaming function written as a
/// stream rather than with an emitter).
fn returned_stream_item(output: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::ImplTrait(implemented) = ty.as_ref() else {
        return None;
    };
    implemented.bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let last = bound.path.segments.last()?;
        if last.ident != "Stream" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|a| match a {
            GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(assoc.ty.clone()),
            _ => None,
        })
    })
}

/// How a streaming function's items leave it: through the emitter it takes, or (it returns
/// a stream) pumped from the returned stream into an emitter made for it.
enum Streaming {
    No,
    Emitter(syn::Ident, Type),
    Returned(Type),
}

impl Streaming {
    fn of(sig: &syn::Signature, params: &Params) -> syn::Result<Self> {
        match (&params.emitter, returned_stream_item(&sig.output)) {
            (Some((emitter, _)), Some(_)) => Err(syn::Error::new(
                emitter.span(),
                "fleet: a streaming function either takes a fleet::Emitter or returns an impl Stream, not both",
            )),
            (Some((emitter, item)), None) => Ok(Streaming::Emitter(emitter.clone(), item.clone())),
            (None, Some(item)) => Ok(Streaming::Returned(item)),
            (None, None) => Ok(Streaming::No),
        }
    }

    /// The item type, when it streams.
    fn item(&self) -> Option<&Type> {
        match self {
            Streaming::No => None,
            Streaming::Emitter(_, item) | Streaming::Returned(item) => Some(item),
        }
    }

    /// Code before the call (the emitter), and code after it in place of `finish` (the
    /// pump), for `what` (the function's name expression).
    fn wrap(&self, what: &TokenStream2, finish: TokenStream2) -> (TokenStream2, TokenStream2) {
        match self {
            Streaming::No => (quote!(), finish),
            Streaming::Emitter(emitter, item) => (
                quote!(let #emitter: ::fleet::Emitter<#item> = ::fleet::__private::emitter(#what)?;),
                finish,
            ),
            Streaming::Returned(item) => (
                quote!(let mut __emitter: ::fleet::Emitter<#item> = ::fleet::__private::emitter(#what)?;),
                quote! {
                    let mut __items = ::std::pin::pin!(__out);
                    while let ::core::option::Option::Some(__item) = ::fleet::__private::next_item(&mut __items).await {
                        __emitter.emit(__item).await.map_err(::fleet::__private::TaskError::system)?;
                    }
                    ::fleet::__private::encode_return(&(), #what)
                },
            ),
        }
    }
}

/// A signature's parameters: those that travel (in order), and the `fleet::Emitter<T>` a
/// streaming function or method takes (its name and `T`), which the runtime supplies.
struct Params {
    wire: Vec<(syn::Ident, Type)>,
    emitter: Option<(syn::Ident, Type)>,
    /// Every parameter's name, in the signature's order (for the call).
    all: Vec<syn::Ident>,
}

fn params(inputs: &syn::punctuated::Punctuated<FnArg, syn::token::Comma>) -> syn::Result<Params> {
    let mut out = Params {
        wire: Vec::new(),
        emitter: None,
        all: Vec::new(),
    };
    for (name, ty) in arguments(inputs)? {
        out.all.push(name.clone());
        match emitter_item(&ty) {
            Some(_) if out.emitter.is_some() => {
                return Err(syn::Error::new(
                    name.span(),
                    "fleet: a streaming function takes one fleet::Emitter (it sends every item through it)",
                ))
            }
            Some(item) => out.emitter = Some((name, item)),
            None => out.wire.push((name, ty)),
        }
    }
    Ok(out)
}

/// Code that turns the call's output (`__out`) into encoded bytes or an application error.
fn finish(fallible: bool, name: &TokenStream2) -> TokenStream2 {
    if fallible {
        quote! {
            match __out {
                ::core::result::Result::Ok(v) => ::fleet::__private::encode_return(&v, #name),
                ::core::result::Result::Err(e) => ::core::result::Result::Err(::fleet::__private::TaskError::application(e)),
            }
        }
    } else {
        quote! { ::fleet::__private::encode_return(&__out, #name) }
    }
}

/// `#[fleet::remote]`: makes a function callable as a task.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let num_returns = match num_returns(TokenStream2::from(attr)) {
        Ok(n) => n,
        Err(error) => return error.to_compile_error().into(),
    };
    let function = parse_macro_input!(item as ItemFn);
    match expand_remote(function, num_returns) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Parses `#[fleet::remote]`'s one option, `num_returns = N` (default 1).
fn num_returns(attr: TokenStream2) -> syn::Result<usize> {
    if attr.is_empty() {
        return Ok(1);
    }
    let wrong = |span: Span| {
        syn::Error::new(
            span,
            "fleet::remote takes one option, `num_returns = N` (a function returning a tuple of N values); set call options with name::options()",
        )
    };
    let pair: syn::MetaNameValue = syn::parse2(attr).map_err(|e| wrong(e.span()))?;
    if !pair.path.is_ident("num_returns") {
        return Err(wrong(pair.path.span()));
    }
    let syn::Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Int(int),
        ..
    }) = &pair.value
    else {
        return Err(wrong(pair.value.span()));
    };
    let n = int.base10_parse::<usize>()?;
    if n == 0 {
        return Err(syn::Error::new(
            int.span(),
            "fleet::remote: num_returns must be at least 1",
        ));
    }
    Ok(n)
}

/// The element types of a `num_returns = N` function's tuple.
fn tuple_of(value: &TokenStream2, n: usize, span: Span) -> syn::Result<Vec<Type>> {
    let wrong = || {
        syn::Error::new(
            span,
            format!("fleet::remote(num_returns = {n}) needs a function returning a tuple of {n} values, e.g. -> ({})", (0..n).map(|i| format!("T{i}")).collect::<Vec<_>>().join(", ")),
        )
    };
    match syn::parse2::<Type>(value.clone()) {
        Ok(Type::Tuple(tuple)) if tuple.elems.len() == n => Ok(tuple.elems.into_iter().collect()),
        _ => Err(wrong()),
    }
}

fn expand_remote(function: ItemFn, num_returns: usize) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "fleet::remote functions cannot be generic (a worker finds them by name)",
        ));
    }
    let name = &sig.ident;
    let params = params(&sig.inputs)?;
    let args = &params.wire;
    let ret = returns(&sig.output);
    let value = &ret.value;
    let arg_names: Vec<_> = args.iter().map(|(n, _)| n).collect();
    let arg_types: Vec<_> = args.iter().map(|(_, t)| t).collect();
    let indices: Vec<usize> = (0..args.len()).collect();
    let call_names = &params.all;
    let streaming = Streaming::of(sig, &params)?;
    if num_returns > 1 {
        if streaming.item().is_some() {
            return Err(syn::Error::new(
                sig.ident.span(),
                "fleet::remote: a function streams or has num_returns, not both",
            ));
        }
        return expand_multi_return(&function, &params, &ret, num_returns);
    }
    // A streaming function: the caller gets its items; the runtime supplies the emitter.
    let (returned, submit) = match streaming.item() {
        Some(item) => (
            quote!(::fleet::ObjectRefStream<#item>),
            quote!(::fleet::submit_streaming_task),
        ),
        None => (
            quote!(::fleet::ObjectRef<#value>),
            quote!(::fleet::submit_task),
        ),
    };
    let awaited = if sig.asyncness.is_some() {
        quote!(.await)
    } else {
        quote!()
    };
    let (make_emitter, finish) = streaming.wrap(&quote!(NAME), finish(ret.fallible, &quote!(NAME)));
    Ok(remote_module(
        &function,
        quote! {

            impl Options {
                /// Submits the call.
                pub fn remote(self, #(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> #returned {
                    #submit(NAME, ::std::vec![#(::fleet::IntoArg::<#arg_types>::into_arg(#arg_names)),*], self.0)
                }
            }

            /// Options for a call.
            pub fn options() -> Options { Options::default() }

            /// Submits a call; the reference (or, streaming, the stream of items) resolves
            /// to its result.
            pub fn remote(#(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> #returned {
                options().remote(#(#arg_names),*)
            }

            fn __fleet_call(__args: ::fleet::__private::Args) -> ::fleet::__private::BoxFuture<'static, ::core::result::Result<::std::vec::Vec<u8>, ::fleet::__private::TaskError>> {
                ::std::boxed::Box::pin(async move {
                    #(let #arg_names: #arg_types = ::fleet::__private::decode_arg(&__args, #indices, NAME)?;)*
                    #make_emitter
                    let __out = super::#name(#(#call_names),*) #awaited;
                    #finish
                })
            }

        },
    ))
}

/// The function, and next to it the module of its remote calls: its registry name, its call
/// options (`name::options()`), `items` (its `remote` methods and `__fleet_call`, which
/// each kind of function writes itself) and its registration.
fn remote_module(function: &ItemFn, items: TokenStream2) -> TokenStream2 {
    let name = &function.sig.ident;
    let vis = &function.vis;
    let options = options_struct();
    quote! {
        #function

        #[doc = concat!("Remote calls of [`", stringify!(#name), "`].")]
        #[allow(non_snake_case, non_camel_case_types, dead_code)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The name workers find this function by.
            pub const NAME: &str = module_path!();

            #options

            #items

            ::fleet::__private::inventory::submit! {
                ::fleet::__private::RemoteFunction { name: NAME, call: __fleet_call }
            }
        }
    }
}

/// A remote function's call options (`name::options()`), up to its `remote` method.
fn options_struct() -> TokenStream2 {
    quote! {
        /// Call options.
        #[derive(Clone, Debug, Default)]
        pub struct Options(pub ::fleet::TaskOptions);

        impl Options {
            /// CPUs the task needs (default 1).
            pub fn num_cpus(mut self, cpus: f64) -> Self { self.0.resources.insert("CPU".into(), cpus); self }
            /// GPUs the task needs.
            pub fn num_gpus(mut self, gpus: f64) -> Self { self.0.resources.insert("GPU".into(), gpus); self }
            /// A custom resource (or "memory" in bytes).
            pub fn resource(mut self, name: &str, amount: f64) -> Self { self.0.resources.insert(name.into(), amount); self }
            /// Retries when the worker dies (default 3).
            pub fn max_retries(mut self, retries: u32) -> Self { self.0.max_retries = retries; self }
            /// Also retry on an application error or panic.
            pub fn retry_exceptions(mut self, retry: bool) -> Self { self.0.retry_exceptions = retry; self }
            /// Where it may run (default: hybrid).
            pub fn scheduling(mut self, scheduling: ::fleet::Scheduling) -> Self { self.0.scheduling = scheduling; self }
            /// Node labels it requires or prefers (default: any node).
            pub fn label_selector(mut self, selector: ::fleet::LabelSelector) -> Self { self.0.label_selector = selector; self }
            /// With placement-group scheduling: what it submits without a placement of its own goes into the same group.
            pub fn capture_child_tasks(mut self, capture: bool) -> Self { self.0.capture_child_tasks = capture; self }
        }
    }
}

/// `#[fleet::remote(num_returns = N)]`: the caller gets a tuple of N references, one per
/// value of the returned tuple, each its own object.
fn expand_multi_return(
    function: &ItemFn,
    params: &Params,
    ret: &Returns,
    n: usize,
) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    let name = &sig.ident;
    let span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    let elems = tuple_of(&ret.value, n, span)?;
    let arg_names: Vec<_> = params.wire.iter().map(|(n, _)| n).collect();
    let arg_types: Vec<_> = params.wire.iter().map(|(_, t)| t).collect();
    let indices: Vec<usize> = (0..arg_names.len()).collect();
    let parts: Vec<_> = (0..n).map(|i| format_ident!("__r{}", i)).collect();
    let awaited = if sig.asyncness.is_some() {
        quote!(.await)
    } else {
        quote!()
    };
    let value = if ret.fallible {
        quote! {
            match __out {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => return ::core::result::Result::Err(::fleet::__private::TaskError::application(e)),
            }
        }
    } else {
        quote!(__out)
    };
    Ok(remote_module(
        function,
        quote! {

            impl Options {
                /// Submits the call: one reference per return value.
                pub fn remote(self, #(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> (#(::fleet::ObjectRef<#elems>),*) {
                    let mut __returns = ::fleet::__private::submit_with_returns(NAME, ::std::vec![#(::fleet::IntoArg::<#arg_types>::into_arg(#arg_names)),*], self.0, #n);
                    (#(__returns.take::<#elems>()),*)
                }
            }

            /// Options for a call.
            pub fn options() -> Options { Options::default() }

            /// Submits a call: one reference per return value, each its own object.
            pub fn remote(#(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> (#(::fleet::ObjectRef<#elems>),*) {
                options().remote(#(#arg_names),*)
            }

            fn __fleet_call(__args: ::fleet::__private::Args) -> ::fleet::__private::BoxFuture<'static, ::core::result::Result<::std::vec::Vec<u8>, ::fleet::__private::TaskError>> {
                ::std::boxed::Box::pin(async move {
                    #(let #arg_names: #arg_types = ::fleet::__private::decode_arg(&__args, #indices, NAME)?;)*
                    let __out = super::#name(#(#arg_names),*) #awaited;
                    let (#(#parts),*) = #value;
                    ::fleet::__private::send_returns(NAME, ::std::vec![#(::fleet::__private::encode_return(&#parts, NAME)?),*]).await?;
                    ::fleet::__private::encode_return(&(), NAME)
                })
            }

        },
    ))
}

/// `#[fleet::actor]` on a struct or its `impl` block.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let item = TokenStream2::from(item);
    if let Ok(item_struct) = syn::parse2::<ItemStruct>(item.clone()) {
        let checkpoint = match attr.to_string().as_str() {
            "" => false,
            "checkpoint" => true,
            other => {
                let hint = if other.starts_with("concurrency_groups") {
                    "concurrency groups go on the actor's impl block: #[fleet::actor(concurrency_groups(io = 8))] impl ..."
                } else {
                    "did you mean `checkpoint`?"
                };
                return syn::Error::new(
                    Span::call_site(),
                    format!("fleet::actor: unknown option '{other}' on the struct ({hint})"),
                )
                .to_compile_error()
                .into();
            }
        };
        return expand_actor_struct(item_struct, checkpoint).into();
    }
    let groups = match concurrency_groups(attr) {
        Ok(groups) => groups,
        Err(error) => return error.to_compile_error().into(),
    };
    match syn::parse2::<ItemImpl>(item) {
        Ok(item_impl) => match expand_actor_impl(item_impl, groups) {
            Ok(tokens) => tokens.into(),
            Err(error) => error.to_compile_error().into(),
        },
        Err(_) => syn::Error::new(
            Span::call_site(),
            "fleet::actor goes on a struct and on its impl block",
        )
        .to_compile_error()
        .into(),
    }
}

fn expand_actor_struct(item: ItemStruct, checkpoint: bool) -> TokenStream2 {
    let name = &item.ident;
    let vis = &item.vis;
    let handle = format_ident!("{}Handle", name);
    let (checkpoint_fn, restore_fn) = if checkpoint {
        (
            quote! {
                fn __fleet_checkpoint(&self) -> ::core::option::Option<::core::result::Result<::std::vec::Vec<u8>, ::fleet::__private::TaskError>> {
                    ::core::option::Option::Some(::fleet::__private::encode_return(self, <Self as ::fleet::ActorType>::NAME))
                }
            },
            quote! {
                fn __fleet_restore(bytes: &[u8]) -> ::core::result::Result<Self, ::fleet::__private::TaskError> {
                    ::fleet::__private::decode_state(bytes, <Self as ::fleet::ActorType>::NAME)
                }
            },
        )
    } else {
        (
            quote! {
                fn __fleet_checkpoint(&self) -> ::core::option::Option<::core::result::Result<::std::vec::Vec<u8>, ::fleet::__private::TaskError>> {
                    ::core::option::Option::None
                }
            },
            quote! {
                fn __fleet_restore(_: &[u8]) -> ::core::result::Result<Self, ::fleet::__private::TaskError> {
                    ::core::result::Result::Err(::fleet::__private::TaskError::system(
                        concat!(stringify!(#name), " is not checkpointable; use #[fleet::actor(checkpoint)]")))
                }
            },
        )
    };
    quote! {
        #item

        #[doc = concat!("A handle to a remote [`", stringify!(#name), "`] actor.")]
        #[derive(Clone, Debug, ::fleet::__private::serde::Serialize, ::fleet::__private::serde::Deserialize)]
        #[serde(crate = "::fleet::__private::serde")]
        #vis struct #handle(pub ::fleet::ActorHandle);

        impl ::core::convert::From<::fleet::ActorHandle> for #handle {
            fn from(raw: ::fleet::ActorHandle) -> Self { #handle(raw) }
        }

        impl #handle {
            /// The untyped handle.
            pub fn raw(&self) -> &::fleet::ActorHandle { &self.0 }
            /// Checkpoints the actor now; resolves to the checkpoint's sequence number.
            pub fn checkpoint(&self) -> ::fleet::ObjectRef<u64> { self.0.checkpoint() }
        }

        impl ::fleet::ActorType for #name {
            const NAME: &'static str = concat!(module_path!(), "::", stringify!(#name));
            type Handle = #handle;
        }

        impl #name {
            #checkpoint_fn
            #restore_fn
        }
    }
}

/// A concurrency group declared on an actor's impl block: its name and limit.
struct Group {
    name: syn::Ident,
    limit: usize,
}

/// Parses the impl block's `concurrency_groups(io = 8, compute = 1)` (or nothing).
fn concurrency_groups(attr: TokenStream2) -> syn::Result<Vec<Group>> {
    if attr.is_empty() {
        return Ok(Vec::new());
    }
    let wrong = |span: Span| {
        syn::Error::new(
            span,
            "fleet::actor on an impl block takes `concurrency_groups(name = limit, ...)`, e.g. #[fleet::actor(concurrency_groups(io = 8, compute = 1))] (checkpoint goes on the struct)",
        )
    };
    let meta: syn::Meta = syn::parse2(attr).map_err(|e| wrong(e.span()))?;
    let syn::Meta::List(list) = &meta else {
        return Err(wrong(meta.span()));
    };
    if !list.path.is_ident("concurrency_groups") {
        return Err(wrong(list.path.span()));
    }
    let pairs = list.parse_args_with(
        syn::punctuated::Punctuated::<syn::MetaNameValue, syn::Token![,]>::parse_terminated,
    )?;
    let mut groups: Vec<Group> = Vec::new();
    for pair in pairs {
        let name = pair
            .path
            .get_ident()
            .cloned()
            .ok_or_else(|| wrong(pair.path.span()))?;
        let limit = match &pair.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(int),
                ..
            }) => int.base10_parse::<usize>()?,
            other => return Err(syn::Error::new(
                other.span(),
                "fleet::actor: a concurrency group's limit is a whole number of calls, e.g. io = 8",
            )),
        };
        if limit == 0 {
            return Err(syn::Error::new(
                pair.value.span(),
                format!("fleet::actor: concurrency group `{name}` must allow at least 1 call"),
            ));
        }
        if groups.iter().any(|g| g.name == name) {
            return Err(syn::Error::new(
                name.span(),
                format!("fleet::actor: concurrency group `{name}` is declared twice"),
            ));
        }
        groups.push(Group { name, limit });
    }
    Ok(groups)
}

/// Takes a method's `#[group(name)]` off it; the group's number and limit, if it has one.
fn take_group(
    method: &mut syn::ImplItemFn,
    groups: &[Group],
) -> syn::Result<Option<(usize, usize)>> {
    let Some(position) = method.attrs.iter().position(|a| a.path().is_ident("group")) else {
        return Ok(None);
    };
    let attr = method.attrs.remove(position);
    let name: syn::Ident = attr.parse_args().map_err(|_| {
        syn::Error::new(
            attr.meta.span(),
            "fleet::actor: write a method's group as #[group(name)]",
        )
    })?;
    let Some(index) = groups.iter().position(|g| g.name == name) else {
        let declared: Vec<String> = groups.iter().map(|g| g.name.to_string()).collect();
        return Err(syn::Error::new(
            name.span(),
            if declared.is_empty() {
                format!("fleet::actor: no concurrency group `{name}`: declare it on the impl block, #[fleet::actor(concurrency_groups({name} = 4))]")
            } else {
                format!(
                    "fleet::actor: no concurrency group `{name}` (declared: {})",
                    declared.join(", ")
                )
            },
        ));
    };
    let shared = matches!(method.sig.inputs.first(), Some(FnArg::Receiver(r)) if r.mutability.is_none() && r.reference.is_some());
    if !shared {
        return Err(syn::Error::new(
            attr.meta.span(),
            "fleet::actor: a concurrency group is for `&self` methods (a `&mut self` call always runs alone)",
        ));
    }
    if method.attrs.iter().any(|a| a.path().is_ident("group")) {
        return Err(syn::Error::new(
            method.sig.ident.span(),
            "fleet::actor: a method belongs to one concurrency group",
        ));
    }
    Ok(Some((index, groups[index].limit)))
}

fn expand_actor_impl(mut item: ItemImpl, groups: Vec<Group>) -> syn::Result<TokenStream2> {
    // `#[group]` is ours: read and removed before the impl block is emitted.
    let mut method_groups = Vec::new();
    for impl_item in &mut item.items {
        if let ImplItem::Fn(method) = impl_item {
            if let Some((index, limit)) = take_group(method, &groups)? {
                let method_str = method.sig.ident.to_string();
                method_groups.push(
                    quote! { #method_str => ::core::option::Option::Some((#index, #limit)), },
                );
            }
        }
    }
    let has_groups = !groups.is_empty();
    let Type::Path(self_path) = item.self_ty.as_ref() else {
        return Err(syn::Error::new(
            item.self_ty.span(),
            "fleet::actor: expected `impl TypeName`",
        ));
    };
    let name = self_path
        .path
        .segments
        .last()
        .map(|s| s.ident.clone())
        .ok_or_else(|| {
            syn::Error::new(item.self_ty.span(), "fleet::actor: expected a type name")
        })?;
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "fleet::actor types cannot be generic (a worker finds them by name)",
        ));
    }
    let handle = format_ident!("{}Handle", name);
    let mut constructor = None;
    let mut handle_methods = Vec::new();
    let mut dispatch_arms = Vec::new();
    let mut shared_arms = Vec::new();
    for impl_item in &item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let sig = &method.sig;
        let method_name = &sig.ident;
        let method_str = method_name.to_string();
        let params = params(&sig.inputs)?;
        let args = &params.wire;
        let call_names = &params.all;
        let arg_names: Vec<_> = args.iter().map(|(n, _)| n.clone()).collect();
        let arg_types: Vec<_> = args.iter().map(|(_, t)| t.clone()).collect();
        let indices: Vec<usize> = (0..args.len()).collect();
        let has_receiver = matches!(sig.inputs.first(), Some(FnArg::Receiver(_)));
        let awaited = if sig.asyncness.is_some() {
            quote!(.await)
        } else {
            quote!()
        };
        if method_str == "new" && !has_receiver {
            if let Some((emitter, _)) = &params.emitter {
                return Err(syn::Error::new(
                    emitter.span(),
                    "fleet::actor: a constructor cannot stream (take the fleet::Emitter in a method)",
                ));
            }
            constructor = Some(quote! {
                impl #name {
                    /// Builds a remote instance: `.spawn().await` creates it.
                    pub fn remote(#(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> ::fleet::ActorBuilder<#name> {
                        ::fleet::ActorBuilder::new(::std::vec![#(::fleet::IntoArg::<#arg_types>::into_arg(#arg_names)),*])
                    }

                    fn __fleet_create(__args: ::fleet::__private::Args) -> ::fleet::__private::BoxFuture<'static, ::core::result::Result<::std::boxed::Box<dyn ::fleet::__private::ActorObject>, ::fleet::__private::TaskError>> {
                        ::std::boxed::Box::pin(async move {
                            const NAME: &str = <#name as ::fleet::ActorType>::NAME;
                            #(let #arg_names: #arg_types = ::fleet::__private::decode_arg(&__args, #indices, NAME)?;)*
                            let __instance: #name = #name::new(#(#arg_names),*) #awaited;
                            ::core::result::Result::Ok(::std::boxed::Box::new(__instance) as ::std::boxed::Box<dyn ::fleet::__private::ActorObject>)
                        })
                    }

                    fn __fleet_restore_boxed(bytes: &[u8]) -> ::core::result::Result<::std::boxed::Box<dyn ::fleet::__private::ActorObject>, ::fleet::__private::TaskError> {
                        ::core::result::Result::Ok(::std::boxed::Box::new(#name::__fleet_restore(bytes)?) as ::std::boxed::Box<dyn ::fleet::__private::ActorObject>)
                    }
                }
            });
            continue;
        }
        if !has_receiver || !matches!(method.vis, syn::Visibility::Public(_)) {
            continue;
        }
        let ret = returns(&sig.output);
        let value = &ret.value;
        let full = quote!(concat!(stringify!(#name), "::", #method_str));
        let streaming = Streaming::of(sig, &params)?;
        let (make_emitter, finish) = streaming.wrap(&full, finish(ret.fallible, &full));
        let (returned, call) = match streaming.item() {
            Some(item) => (
                quote!(::fleet::ObjectRefStream<#item>),
                quote!(call_streaming),
            ),
            None => (quote!(::fleet::ObjectRef<#value>), quote!(call)),
        };
        handle_methods.push(quote! {
            /// Calls the method on the actor; the reference (or, streaming, the stream of
            /// items) resolves to its result.
            pub fn #method_name(&self, #(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> #returned {
                self.0.#call(#method_str, ::std::vec![#(::fleet::IntoArg::<#arg_types>::into_arg(#arg_names)),*])
            }
        });
        dispatch_arms.push(quote! {
            #method_str => {
                #(let #arg_names: #arg_types = ::fleet::__private::decode_arg(&__args, #indices, #full)?;)*
                #make_emitter
                let __out = self.#method_name(#(#call_names),*) #awaited;
                #finish
            }
        });
        let shared =
            matches!(sig.inputs.first(), Some(FnArg::Receiver(r)) if r.mutability.is_none());
        if shared {
            shared_arms.push(quote! {
                #method_str => ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                    #(let #arg_names: #arg_types = ::fleet::__private::decode_arg(&__args, #indices, #full)?;)*
                    #make_emitter
                    let __out = self.#method_name(#(#call_names),*) #awaited;
                    #finish
                })),
            });
        }
    }
    let constructor = constructor.ok_or_else(|| {
        syn::Error::new(
            item.self_ty.span(),
            "fleet::actor: the impl block needs a constructor `fn new(...) -> Self`",
        )
    })?;
    Ok(quote! {
        // An actor's `new` is its remote constructor; a `Default` would not be used.
        #[allow(clippy::new_without_default)]
        #item

        #constructor

        impl #handle {
            #(#handle_methods)*
        }

        impl ::fleet::__private::ActorObject for #name {
            fn dispatch<'a>(&'a mut self, __method: &'a str, __args: ::fleet::__private::Args) -> ::fleet::__private::BoxFuture<'a, ::core::result::Result<::std::vec::Vec<u8>, ::fleet::__private::TaskError>> {
                ::std::boxed::Box::pin(async move {
                    match __method {
                        #(#dispatch_arms)*
                        other => ::core::result::Result::Err(::fleet::__private::TaskError::system(
                            format!("{} has no remote method {other}", <#name as ::fleet::ActorType>::NAME))),
                    }
                })
            }

            fn dispatch_shared<'a>(&'a self, __method: &str, __args: ::fleet::__private::Args) -> ::core::result::Result<::fleet::__private::LocalBoxFuture<'a, ::core::result::Result<::std::vec::Vec<u8>, ::fleet::__private::TaskError>>, ::fleet::__private::Args> {
                match __method {
                    #(#shared_arms)*
                    _ => ::core::result::Result::Err(__args),
                }
            }

            fn checkpoint(&self) -> ::core::option::Option<::core::result::Result<::std::vec::Vec<u8>, ::fleet::__private::TaskError>> {
                self.__fleet_checkpoint()
            }

            fn concurrency_group(&self, __method: &str) -> ::core::option::Option<(usize, usize)> {
                match __method {
                    #(#method_groups)*
                    _ => ::core::option::Option::None,
                }
            }

            fn has_concurrency_groups(&self) -> bool {
                #has_groups
            }
        }

        ::fleet::__private::inventory::submit! {
            ::fleet::__private::ActorFactory {
                name: <#name as ::fleet::ActorType>::NAME,
                create: #name::__fleet_create,
                restore: #name::__fleet_restore_boxed,
            }
        }
    })
}

/// `#[fleet::main]`: `async fn main()` with Fleet initialized first.
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    if function.sig.asyncness.is_none() {
        return syn::Error::new(function.sig.span(), "fleet::main goes on `async fn main()`")
            .to_compile_error()
            .into();
    }
    let body = &function.block;
    let output = &function.sig.output;
    let attrs = &function.attrs;
    let init = match output {
        ReturnType::Default => quote! {
            if let ::core::result::Result::Err(e) = ::fleet::init().await {
                eprintln!("error: {e}");
                ::std::process::exit(1);
            }
        },
        ReturnType::Type(..) => quote! { ::fleet::init().await?; },
    };
    quote! {
        #(#attrs)*
        fn main() #output {
            // A worker process (started by a raylet) runs its tasks on one thread: they
            // come one lease at a time, and cross-thread wake-ups are most of an RPC's cost.
            let __builder = if ::std::env::var_os("FLEET_WORKER_ID").is_some() {
                ::fleet::__private::tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                ::fleet::__private::tokio::runtime::Builder::new_multi_thread().enable_all().build()
            };
            let __runtime = match __builder {
                ::core::result::Result::Ok(runtime) => runtime,
                ::core::result::Result::Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    ::std::process::exit(1);
                }
            };
            __runtime.block_on(async move {
                #init
                let __result = async move #body.await;
                ::fleet::shutdown().await;
                __result
            })
        }
    }
    .into()
}
