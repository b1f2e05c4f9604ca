package server

import (
	"encoding/binary"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// Alarms are replicated: raising or disarming one is a log entry (etcd's
// AlarmRequest inside an InternalRaftRequest), applied by applyAlarm into
// the store's meta under "alarm/<member ID, 16 hex digits>/<alarm type>",
// so every member and every snapshot agrees on the active alarms.
const alarmPrefix = "alarm/"

func alarmKey(member uint64, t pb.AlarmType) string {
	return fmt.Sprintf("%s%016x/%d", alarmPrefix, member, int32(t))
}

// alarms returns the active alarms, in member then type order.
func (s *Server) alarms() []*pb.AlarmMember {
	var out []*pb.AlarmMember
	for _, k := range s.store.MetaKeys(alarmPrefix) {
		var m uint64
		var t int32
		if _, err := fmt.Sscanf(k[len(alarmPrefix):], "%016x/%d", &m, &t); err == nil {
			out = append(out, &pb.AlarmMember{MemberID: m, Alarm: pb.AlarmType(t)})
		}
	}
	return out
}

// applyAlarm activates or deactivates one alarm; its response lists the
// alarms it changed (ACTIVATE, DEACTIVATE) or all of them (GET).
func (s *Server) applyAlarm(r *pb.AlarmRequest) (proto.Message, error, bool) {
	resp := &pb.AlarmResponse{}
	switch r.Action {
	case pb.AlarmRequest_ACTIVATE:
		if r.Alarm == pb.AlarmType_NONE {
			break
		}
		k := alarmKey(r.MemberID, r.Alarm)
		if s.store.Meta(k) == nil {
			s.store.SetMeta(k, binary.AppendUvarint(nil, uint64(r.Alarm)))
		}
		resp.Alarms = append(resp.Alarms, &pb.AlarmMember{MemberID: r.MemberID, Alarm: r.Alarm})
	case pb.AlarmRequest_DEACTIVATE:
		for _, a := range s.alarms() {
			if (r.MemberID == 0 || a.MemberID == r.MemberID) && (r.Alarm == pb.AlarmType_NONE || a.Alarm == r.Alarm) {
				s.store.SetMeta(alarmKey(a.MemberID, a.Alarm), nil)
				resp.Alarms = append(resp.Alarms, a)
			}
		}
	default:
		resp.Alarms = s.alarms()
	}
	return resp, nil, true
}
