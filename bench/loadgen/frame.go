package main

import (
	"encoding/json"
	"strconv"
)

// frame holds the fields of a server frame the scenario reads.
type frame struct {
	Type           string          `json:"type"`
	Ref            json.RawMessage `json:"ref"`
	Code           any             `json:"code"`
	ConversationID string          `json:"conversation_id"`
	Seq            int64           `json:"seq"`
	Content        struct {
		Text string `json:"text"`
	} `json:"content"`
}

// decodeFrame reads a server frame: a scan of the top-level keys for the usual frames (no escapes
// in the strings it keeps), encoding/json for anything else. False when it is not a JSON object.
func decodeFrame(raw []byte, f *frame) bool {
	if quickDecode(raw, f) {
		return true
	}
	*f = frame{}
	return json.Unmarshal(raw, f) == nil
}

func quickDecode(raw []byte, f *frame) bool {
	*f = frame{}
	s := scanner{data: raw}
	return s.object(func(key []byte) bool {
		switch string(key) {
		case "type":
			v, ok := s.plainString()
			f.Type = v
			return ok
		case "conversation_id":
			v, ok := s.plainString()
			f.ConversationID = v
			return ok
		case "ref":
			start := s.at
			if !s.skip() {
				return false
			}
			f.Ref = raw[start:s.at]
			return true
		case "code":
			v, ok := s.plainString()
			if ok {
				f.Code = v
			}
			return ok
		case "seq":
			start := s.at
			if !s.skip() {
				return false
			}
			seq, err := strconv.ParseInt(string(raw[start:s.at]), 10, 64)
			f.Seq = seq
			return err == nil
		case "content":
			return s.object(func(inner []byte) bool {
				if string(inner) == "text" {
					v, ok := s.plainString()
					f.Content.Text = v
					return ok
				}
				return s.skip()
			})
		}
		return s.skip()
	})
}

// scanner walks JSON text; it gives up (false) on anything it does not handle, and the caller then
// decodes with encoding/json.
type scanner struct {
	data []byte
	at   int
}

func (s *scanner) space() {
	for s.at < len(s.data) {
		switch s.data[s.at] {
		case ' ', '\t', '\n', '\r':
			s.at++
		default:
			return
		}
	}
}

func (s *scanner) peek() byte {
	s.space()
	if s.at < len(s.data) {
		return s.data[s.at]
	}
	return 0
}

// object calls field(key) for every key of the object at the cursor; field consumes the value.
func (s *scanner) object(field func(key []byte) bool) bool {
	if s.peek() != '{' {
		return false
	}
	s.at++
	if s.peek() == '}' {
		s.at++
		return true
	}
	for {
		if s.peek() != '"' {
			return false
		}
		key, ok := s.rawString()
		if !ok || s.peek() != ':' {
			return false
		}
		s.at++
		s.space()
		if !field(key) {
			return false
		}
		switch s.peek() {
		case ',':
			s.at++
		case '}':
			s.at++
			return true
		default:
			return false
		}
	}
}

// rawString is the bytes of a string without escapes (false if it has any).
func (s *scanner) rawString() ([]byte, bool) {
	if s.peek() != '"' {
		return nil, false
	}
	start := s.at + 1
	for i := start; i < len(s.data); i++ {
		switch s.data[i] {
		case '\\':
			return nil, false
		case '"':
			s.at = i + 1
			return s.data[start:i], true
		}
	}
	return nil, false
}

func (s *scanner) plainString() (string, bool) {
	if s.peek() == 'n' { // null
		return "", s.skip()
	}
	v, ok := s.rawString()
	return string(v), ok
}

// skip moves past one value of any kind.
func (s *scanner) skip() bool {
	switch c := s.peek(); {
	case c == '"':
		for i := s.at + 1; i < len(s.data); i++ {
			switch s.data[i] {
			case '\\':
				i++
			case '"':
				s.at = i + 1
				return true
			}
		}
		return false
	case c == '{' || c == '[':
		depth := 0
		for s.at < len(s.data) {
			switch s.data[s.at] {
			case '"':
				if !s.skip() {
					return false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.at++
					return true
				}
			}
			s.at++
		}
		return false
	case c == 0:
		return false
	default: // number, true, false, null
		start := s.at
		for s.at < len(s.data) {
			switch s.data[s.at] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return s.at > start
			}
			s.at++
		}
		return s.at > start
	}
}
