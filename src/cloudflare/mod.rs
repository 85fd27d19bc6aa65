//! Cloudflare API: the typed model and the HTTP client. Nothing else in the crate speaks HTTP to
//! Cloudflare.

pub mod client;
pub mod error;
pub mod model;
pub mod quota;

pub use client::{Client, ListedPage, MutationOutcome};
pub use error::{ApiError, CfErrorDetail, Endpoint};
pub use model::{
    AccountApiToken, AccountId, CertificateAuthority, ClientCertificate, Count, Device,
    Registration, RegistrationType, ResultInfo, ServiceToken, Stamp, User, ZoneId,
};
pub use quota::Quota;
