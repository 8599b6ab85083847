//! The JSON error replies every HTTP route shares: `{"error": "..."}` with a status.

use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

/// 401: the teacher's routes without the admin token.
pub fn unauthorized() -> Response {
    status_json(
        StatusCode::UNAUTHORIZED,
        "the admin token is missing or wrong: open the teacher URL that `easel serve` printed \
         (it ends with &admin=TOKEN)",
    )
}

/// `{"error": error}` with `status`.
pub fn status_json(status: StatusCode, error: &str) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": error })),
        status,
    )
    .into_response()
}
