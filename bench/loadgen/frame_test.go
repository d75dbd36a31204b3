package main

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestFramesDecodeAsEncodingJSONDecodesThem(t *testing.T) {
	frames := []string{
		`{"type":"send_ack","ref":12,"conversation_id":"01a2199ba7dfee873700fb6b93","seq":1,"message_id":"01a","created_at":"2026-11-26T20:46:02.806Z","duplicate":false}`,
		`{"type": "message", "message_id": "01a", "conversation_id": "c1", "seq": 3, "sender_id": "u", "content": {"type": "text", "text": "bench 1796214613790476000 xxxx"}, "recalled": false, "meta": {"a": [1, {"b": "}"}]}, "redelivered": true}`,
		`{"type":"error","ref":7,"code":"rate_limited","message":"user \"x\" limit","retry_after":0.42}`,
		`{"type":"error","ref":null,"code":"unauthorized","message":"invalid access token"}`,
		`{"type":"message","conversation_id":"c\u0031","seq":4,"content":{"text":"a\nb"}}`,
		`{"type":"pong","ref":"p1"}`,
		`{"type":"message","conversation_id":"c1","seq":5,"content":null}`,
	}
	for _, raw := range frames {
		var want, got frame
		if err := json.Unmarshal([]byte(raw), &want); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if !decodeFrame([]byte(raw), &got) {
			t.Fatalf("%s: not decoded", raw)
		}
		want.Ref, got.Ref = json.RawMessage(string(want.Ref)), json.RawMessage(string(got.Ref))
		if !reflect.DeepEqual(want, got) {
			t.Errorf("%s:\n got %+v\nwant %+v", raw, got, want)
		}
	}
	var f frame
	if decodeFrame([]byte(`not json`), &f) || decodeFrame([]byte(`{"type":`), &f) {
		t.Error("garbage decoded")
	}
}

func TestStampedTextsGiveTheirSendTime(t *testing.T) {
	cases := map[string]int64{"bench 123 xx": 123, "bench 45": 45, "bench x": -1, "hello": -1, "bench 12a": -1}
	for text, want := range cases {
		got, ok := sentAt(text)
		if (want < 0 && ok) || (want >= 0 && (!ok || got != want)) {
			t.Errorf("sentAt(%q) = %d, %v", text, got, ok)
		}
	}
}

func TestThePacerKeepsItsScheduleAndSkipsWhatIsTooLate(t *testing.T) {
	p := pacer{rate: 10, start: 100, maxLag: 1}
	if p.due(99.9) != 0 || p.due(100) != 1 || p.due(100.05) != 0 || p.nextAt() != 100.1 {
		t.Fatal("schedule")
	}
	if got := p.due(105); got != 10 || p.skipped != 40 {
		t.Fatalf("catch-up: fired %d, skipped %d", got, p.skipped)
	}
}

func TestClientFramesAreMasked(t *testing.T) {
	c := &conn{mask: 0x12345679}
	payload := []byte(`{"type":"ping","id":1}`)
	out := c.appendFrame(nil, opText, payload)
	if out[0] != 0x81 || out[1] != 0x80|byte(len(payload)) {
		t.Fatalf("header % x", out[:2])
	}
	key, body := out[2:6], out[6:]
	for i := range body {
		body[i] ^= key[i&3]
	}
	if string(body) != string(payload) {
		t.Fatalf("unmasked %q", body)
	}
	long := make([]byte, 70000)
	if out := c.appendFrame(nil, opText, long); out[1] != 0x80|127 || len(out) != 2+8+4+70000 {
		t.Fatalf("64-bit length header % x", out[:10])
	}
}
