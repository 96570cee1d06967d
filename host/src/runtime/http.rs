//! `wasi:http` for guests whose toolchain imports it by default (componentize-js does, for
//! `fetch`): linked, so that they run, and closed. Every outgoing request fails with
//! `HTTP-request-denied`, an error the guest sees, as a socket it was not granted is refused.

use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::TaskState;

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
}

/// The `wasi:http` state of a task: the context and the hooks above.
#[derive(Default)]
pub(super) struct Http {
    ctx: WasiHttpCtx,
    hooks: Denied,
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
