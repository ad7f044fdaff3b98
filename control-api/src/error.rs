//! The API's error shape: `{"error":{"code":"SNAKE_CASE","message":"..."}}` with the right status.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use clawdeploy_store::StoreError;

/// An error answered by a handler: [`IntoResponse`] turns it into the status and the JSON body
/// (`WWW-Authenticate: Bearer` on a 401, `Retry-After` when set).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status answered (4xx or 5xx).
    pub status: StatusCode,
    /// A stable `SNAKE_CASE` code (`EMAIL_TAKEN`, `INVALID_TOKEN`…): `error.code` of the body, for
    /// programs.
    pub code: &'static str,
    /// What happened and how to fix it, for people: `error.message` of the body.
    pub message: String,
    /// Extra members of the `error` object (e.g. `field`, `suggestion`).
    pub extra: Vec<(&'static str, serde_json::Value)>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// What failed on our side (a 500's context and error): logged when the error is answered,
    /// never sent to the client.
    pub cause: Option<String>,
}

impl ApiError {
    /// An error with no extra members and no `Retry-After`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            retry_after: None,
            cause: None,
        }
    }

    /// A 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// A 422 about one request field; the field is named in the message and in `error.field`.
    pub fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!("{field}: {message}"),
        )
        .with("field", serde_json::Value::String(field.to_string()))
    }

    /// A 401: no credential, or one that is not (or no longer) valid.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// A 403: the credential is valid but does not allow this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// A 409: the request is well-formed but clashes with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// An internal failure: logged with its cause, answered without it.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Something went wrong on our side; try again shortly.",
        );
        error.cause = Some(format!("{context}: {err}"));
        error
    }

    /// Logs what failed on our side, if anything. Called where the error is answered (the HTTP
    /// response, or a WebSocket close): one line per failure, none for an error built and then
    /// handled.
    pub fn log_cause(&self) {
        if let Some(cause) = &self.cause {
            tracing::error!(status = self.status.as_u16(), code = self.code, "{cause}");
        }
    }

    /// Adds a member to the body's `error` object, such as `suggestion`.
    pub fn with(mut self, key: &'static str, value: serde_json::Value) -> Self {
        self.extra.push((key, value));
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => {
                ApiError::not_found(format!("The {what} does not exist."))
            }
            e if e.is_busy() => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_BUSY",
                    "The database is busy; try again in a moment.",
                );
                err.retry_after = Some(1);
                err
            }
            other => ApiError::internal("store", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log_cause();
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        for (k, v) in self.extra {
            error.insert(k.into(), v);
        }
        let body = Json(serde_json::json!({ "error": error }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            JsonRejection::JsonDataError(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR")
            }
            _ => (StatusCode::BAD_REQUEST, "INVALID_JSON"),
        };
        Self::new(
            status,
            code,
            format!(
                "{}: send a JSON body with Content-Type: application/json",
                rejection.body_text()
            ),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            rejection.body_text(),
        )
    }
}
