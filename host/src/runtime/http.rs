//! `wasi:http` for guests whose toolchain imports it by default (componentize-js does, for
//! `fetch`): linked, so that they run, and closed. Every outgoing request fails with
//! `HTTP-request-denied`, an error the guest sees, as a socket it was not granted is refused.
//!
//! The headers and bodies a guest builds live in the host, outside its memory limit, so each is
//! held to [`HTTP_HELD`] bytes; with the cap on a task's resources (`MAX_RESOURCES`), what
//! `wasi:http` lets a task keep in the host is bounded.

use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::TaskState;

/// The most a header set, or a write to a body, may hold: requests are never sent, so they need
/// no more than an error message's worth.
pub(super) const HTTP_HELD: usize = 4 << 10;

/// The hooks of a task's `wasi:http`: no request leaves.
#[derive(Default)]
pub(super) struct Denied;

/// A response future, as `wasmtime-wasi-http` hands them back.
type Response = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), Error>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Denied {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _body_done: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Response {
        Box::new(async { Err(Error::HttpRequestDenied) })
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        HTTP_HELD
    }
}

/// The `wasi:http` state of a task: the context and the hooks above.
pub(super) struct Http {
    ctx: WasiHttpCtx,
    hooks: Denied,
}

impl Default for Http {
    fn default() -> Self {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(HTTP_HELD);
        Http { ctx, hooks: Denied }
    }
}

impl WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}
