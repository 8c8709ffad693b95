package scrubtest

import (
	"encoding/base64"
	"encoding/pem"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
)

// NewCheckWith is NewCheck for several secrets matched by the leak rule
// (any 8 bytes of any of them, in every view the scrubber reads): the
// client secret first ("" for a client that has none), then, say, the
// forms of a private key (PEMForms).
func NewCheckWith(clientID string, secrets []string, others ...string) Check {
	return Check{scrub.NewWith(clientID, secrets, others...)}
}

// PEMForms are the forms in which the content of the PEM blocks of
// pemText would show in a leak: the DER bytes themselves (which the
// scrubber's base64 and hex views find at any alignment), their base64 in
// one piece, and each line of the PEM body. It returns nil for text that
// holds no PEM block.
func PEMForms(pemText string) []string {
	var out []string
	for rest := []byte(pemText); ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return out
		}
		b64 := base64.StdEncoding.EncodeToString(block.Bytes)
		out = append(out, string(block.Bytes), b64)
		// The PEM body's lines are its 64-character pieces.
		for len(b64) > 64 {
			out, b64 = append(out, b64[:64]), b64[64:]
		}
		out = append(out, b64)
	}
}
