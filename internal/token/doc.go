// Package token is the token engine of desko_auth: a Source obtains OAuth2
// client-credentials tokens for one credential set, caches them, refreshes
// them before they expire, backs off when the token endpoint fails, and
// replaces a token the upstream rejected, within bounds. It imports neither
// Caddy nor certmagic; the Caddy module shares Sources between handlers and
// configs, and a fleet shares their tokens through a Store.
//
// The surface: New(Config) returns a Source; Get, Refresh, WarmUp and Close
// run it; Rejected and Replace tell it of an upstream 401; Status, Observer
// and Scrub are what operators see; SetStore shares its tokens with a
// fleet, and SharedCache says how that store is. Errors are *Error, whose
// Kind says what to do about them.
package token
