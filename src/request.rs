//! The validated domain types a Cancel call becomes at the boundary. Past
//! [`CancelTarget::try_from`], nothing handles the raw request strings.

use std::time::Duration;

use http::HeaderValue;
use tonic::metadata::MetadataMap;

use crate::proto::CancelRequest;

/// The longest ID accepted, in bytes. Graph's printer IDs are GUIDs (36 bytes) and its job IDs
/// short numbers; the cap keeps requests and logs small while leaving room for other formats.
pub const MAX_ID_LEN: usize = 256;

/// The metadata key whose GUID value becomes the `client-request-id` sent to Graph.
pub const X_REQUEST_ID: &str = "x-request-id";

/// The gRPC metadata key that carries the caller's timeout.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A printer ID: non-empty, at most [`MAX_ID_LEN`] bytes, no control characters, and not a dot
/// segment (`.` or `..`), which no percent-encoding could keep from changing a URL's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterId(String);

/// A printer share ID, with the same rules as [`PrinterId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareId(String);

/// A print job ID, with the same rules as [`PrinterId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintJobId(String);

/// What holds a job in Graph: a printer, or a printer share (both are Graph's `printerBase`, whose
/// `jobs` the cancel and the read reach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobParent {
    /// `/print/printers/{printerId}`.
    Printer(PrinterId),
    /// `/print/shares/{printerShareId}`.
    Share(ShareId),
}

/// The print job a Cancel call names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// The printer or share that holds the job.
    pub parent: JobParent,
    /// The job to cancel.
    pub print_job_id: PrintJobId,
}

/// A request field that fails validation, named as the proto names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}{}: {problem}", .other_field.map(|f| format!(" and {f}")).unwrap_or_default())]
pub struct InvalidField {
    /// The proto field name, such as `printer_id`.
    pub field: &'static str,
    /// The other field, when the problem is the two together (`printer_id` and `share_id`, of
    /// which exactly one must be set).
    pub other_field: Option<&'static str>,
    /// What is wrong with it, in words a caller can act on.
    pub problem: &'static str,
}

/// The `client-request-id` sent to Graph with a call and returned to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequestId(HeaderValue);

// === impl CancelTarget ===

impl TryFrom<CancelRequest> for CancelTarget {
    type Error = InvalidField;

    fn try_from(request: CancelRequest) -> Result<Self, Self::Error> {
        let both = |problem| InvalidField {
            field: "printer_id",
            other_field: Some("share_id"),
            problem,
        };
        let parent = match (request.printer_id.is_empty(), request.share_id.is_empty()) {
            (false, true) => {
                JobParent::Printer(PrinterId(validate_id("printer_id", request.printer_id)?))
            }
            (true, false) => JobParent::Share(ShareId(validate_id("share_id", request.share_id)?)),
            (true, true) => return Err(both("exactly one of printer_id and share_id is required")),
            (false, false) => {
                return Err(both(
                    "only one of printer_id and share_id may be set, not both",
                ));
            }
        };
        Ok(Self {
            parent,
            print_job_id: PrintJobId(validate_id("print_job_id", request.print_job_id)?),
        })
    }
}

// === impl JobParent ===

impl JobParent {
    /// The parent's ID as the caller sent it.
    pub fn id(&self) -> &str {
        match self {
            Self::Printer(PrinterId(id)) | Self::Share(ShareId(id)) => id,
        }
    }

    /// The request field that named it: `printer_id` or `share_id`, as logs and spans name it.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Printer(_) => "printer_id",
            Self::Share(_) => "share_id",
        }
    }

    /// Graph's route for cancelling a job of this parent, as client spans name it (a template:
    /// spans of every call share one name, and no ID reaches a span's name).
    pub fn cancel_route(&self) -> &'static str {
        match self {
            Self::Printer(_) => "POST /print/printers/{printerId}/jobs/{printJobId}/cancel",
            Self::Share(_) => "POST /print/shares/{printerShareId}/jobs/{printJobId}/cancel",
        }
    }

    /// Graph's route for reading a job of this parent, as client spans name it.
    pub fn read_route(&self) -> &'static str {
        match self {
            Self::Printer(_) => "GET /print/printers/{printerId}/jobs/{printJobId}",
            Self::Share(_) => "GET /print/shares/{printerShareId}/jobs/{printJobId}",
        }
    }
}

impl PrinterId {
    /// The ID as the caller sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ShareId {
    /// The ID as the caller sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PrintJobId {
    /// The ID as the caller sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_id(field: &'static str, id: String) -> Result<String, InvalidField> {
    let problem = if id.is_empty() {
        "is required"
    } else if id.len() > MAX_ID_LEN {
        "is longer than 256 bytes"
    } else if id.chars().any(char::is_control) {
        "contains control characters"
    } else if id == "." || id == ".." {
        "cannot be `.` or `..`"
    } else {
        return Ok(id);
    };
    Err(InvalidField {
        field,
        other_field: None,
        problem,
    })
}

// === impl ClientRequestId ===

impl ClientRequestId {
    /// The caller's `x-request-id` when it is a GUID in its usual hyphenated form, kept as the
    /// caller wrote it so that it greps the same in both systems' logs; a new random GUID
    /// otherwise, because Graph expects a GUID.
    pub fn from_metadata(metadata: &MetadataMap) -> Self {
        metadata
            .get(X_REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() == 36 && uuid::Uuid::try_parse(value).is_ok())
            .and_then(|value| HeaderValue::from_str(value).ok())
            .map(Self)
            .unwrap_or_else(Self::random)
    }

    /// A new random (v4) GUID.
    pub fn random() -> Self {
        let mut buffer = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
        Self(HeaderValue::from_str(text).expect("a hyphenated GUID is a valid header value"))
    }

    /// The ID as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        // Built only from `str` values, so always visible ASCII.
        self.0.to_str().unwrap_or_default()
    }
}

/// The timeout the caller sent as `grpc-timeout`, if any.
///
/// The format is at most eight ASCII digits followed by a unit: `H`, `M`, `S`, `m` (milli), `u`
/// (micro) or `n` (nano). A value that does not follow it counts as absent, like in grpc-go.
pub fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(printer_id: &str, print_job_id: &str) -> Result<CancelTarget, InvalidField> {
        CancelTarget::try_from(CancelRequest {
            printer_id: printer_id.into(),
            print_job_id: print_job_id.into(),
            share_id: String::new(),
        })
    }

    #[test]
    fn exactly_one_of_printer_and_share_is_required_and_both_fields_are_named() {
        let request = |printer_id: &str, share_id: &str| CancelRequest {
            printer_id: printer_id.into(),
            print_job_id: "1".into(),
            share_id: share_id.into(),
        };
        let share = CancelTarget::try_from(request("", "s/1")).unwrap();
        assert_eq!(
            (share.parent.field(), share.parent.id()),
            ("share_id", "s/1")
        );
        let printer = CancelTarget::try_from(request("p", "")).unwrap();
        assert_eq!(
            (printer.parent.field(), printer.parent.id()),
            ("printer_id", "p")
        );
        for (printer_id, share_id) in [("", ""), ("p", "s")] {
            let error = CancelTarget::try_from(request(printer_id, share_id)).unwrap_err();
            assert_eq!(
                (error.field, error.other_field),
                ("printer_id", Some("share_id"))
            );
            let message = error.to_string();
            assert!(
                message.starts_with("invalid printer_id and share_id: "),
                "{message}"
            );
        }
        let error = CancelTarget::try_from(request("", "..")).unwrap_err();
        assert_eq!((error.field, error.other_field), ("share_id", None));
    }

    #[test]
    fn ids_are_validated_and_the_field_is_named() {
        /// printer_id, print_job_id, and the expected (field, problem).
        type Case = (
            &'static str,
            &'static str,
            Option<(&'static str, &'static str)>,
        );
        let cases: &[Case] = &[
            ("p", "1", None),
            ("../x", "a/b?c#d", None),
            ("%2e%2e", "é 𝄞", None),
            (
                "",
                "1",
                Some((
                    "printer_id",
                    "exactly one of printer_id and share_id is required",
                )),
            ),
            ("p", "", Some(("print_job_id", "is required"))),
            ("..", "1", Some(("printer_id", "cannot be `.` or `..`"))),
            ("p", ".", Some(("print_job_id", "cannot be `.` or `..`"))),
            (
                "p\n",
                "1",
                Some(("printer_id", "contains control characters")),
            ),
        ];
        for &(printer_id, print_job_id, expected) in cases {
            let actual = target(printer_id, print_job_id).err();
            let actual = actual.as_ref().map(|e| (e.field, e.problem));
            assert_eq!(actual, expected, "{printer_id:?} / {print_job_id:?}");
        }
        let long = "x".repeat(MAX_ID_LEN);
        assert!(target(&long, "1").is_ok());
        let too_long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(target("p", &too_long).unwrap_err().field, "print_job_id");
    }

    #[test]
    fn grpc_timeout_is_parsed_in_every_unit() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("0n", Some(Duration::ZERO)),
            ("123456789m", None),
            ("10", None),
            ("m", None),
            ("-1S", None),
            ("1s", None),
            ("1 S", None),
        ];
        for &(value, expected) in cases {
            let mut metadata = MetadataMap::new();
            metadata.insert(GRPC_TIMEOUT, value.parse().unwrap());
            assert_eq!(
                caller_timeout(&metadata),
                expected,
                "grpc-timeout {value:?}"
            );
        }
        assert_eq!(caller_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn client_request_id_keeps_a_caller_guid_and_replaces_anything_else() {
        let guid = "0F8FAD5B-D9CB-469F-A165-70867728950E";
        let mut metadata = MetadataMap::new();
        metadata.insert(X_REQUEST_ID, guid.parse().unwrap());
        assert_eq!(ClientRequestId::from_metadata(&metadata).as_str(), guid);

        for not_a_guid in [
            "abc",
            "0f8fad5bd9cb469fa16570867728950e",
            "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        ] {
            let mut metadata = MetadataMap::new();
            metadata.insert(X_REQUEST_ID, not_a_guid.parse().unwrap());
            let id = ClientRequestId::from_metadata(&metadata);
            assert_ne!(id.as_str(), not_a_guid);
            assert!(uuid::Uuid::try_parse(id.as_str()).is_ok());
        }
        let a = ClientRequestId::from_metadata(&MetadataMap::new());
        let b = ClientRequestId::from_metadata(&MetadataMap::new());
        assert_ne!(a, b);
    }
}
