"""The rtc service: the ICE servers (STUN, and TURN with short-lived credentials) for WebRTC calls."""
