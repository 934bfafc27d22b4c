// emfence console: the words of the register's pages, Chinese first, English available.
// The language is the operator's choice (the 中文/English button, kept in this browser),
// else Chinese unless the browser asks for English first.
"use strict";

const regI18n = (() => {
  const STRINGS = {
    zh: {
      "tab.subjects": "监管对象", "tab.leaves": "请假审批", "tab.zones": "区域",
      "lang.other": "English",
      "subjects.search": "搜索", "subjects.q": "姓名或编号", "subjects.state": "状态",
      "subjects.all": "全部", "subjects.enrol": "登记新对象", "subjects.none": "没有符合条件的对象。",
      "col.id": "编号", "col.name": "姓名", "col.region": "辖区", "col.level": "管理等级",
      "col.officer": "责任民警", "col.state": "状态", "col.subject": "对象",
      "col.zones": "区域", "col.start": "开始", "col.end": "结束", "col.reason": "事由",
      "col.requested_by": "申请人", "col.actions": "操作", "col.device": "设备",
      "col.kind": "类型", "col.issued": "发放时间", "col.source": "来源", "col.time": "时间",
      "col.type": "类型", "col.days": "星期",
      "state.active": "在管", "state.ended": "已解除",
      "leave.requested": "待审批", "leave.refused": "已驳回", "leave.approved": "已批准",
      "leave.active": "请假中", "leave.returned": "已销假", "leave.ended": "已到期",
      "leave.overdue": "逾期未归", "leave.cancelled": "已取消",
      "level.strict": "严管", "level.ordinary": "普管", "level.lenient": "宽管",
      "kind.bracelet": "腕带", "kind.phone": "手机",
      "kind.victim": "被保护人设备",
      "atype.outbound": "越界", "atype.exclusion": "闯入禁区", "atype.offline": "离线",
      "atype.tamper": "腕带破拆", "atype.low_battery": "低电量", "atype.leave_overdue": "请假逾期",
      "atype.curfew": "宵禁违规", "atype.separation": "人机分离", "atype.no_fix": "无定位",
      "atype.power_off": "关机", "atype.approach": "接近禁区", "atype.proximity": "接近被保护人",
      "atype.contact": "违规接触", "atype.warning": "预警",
      "notify.title": "通知", "notify.none": "未发送通知。", "notify.time": "时间",
      "notify.channel": "渠道", "notify.recipient": "接收人", "notify.level": "级别",
      "notify.state": "状态", "notify.attempts": "尝试次数", "notify.error": "最近错误",
      "nchan.webhook": "系统对接", "nchan.email": "邮件", "nchan.sms": "短信",
      "nstate.sent": "已送达", "nstate.pending": "待发送", "nstate.retrying": "重试中",
      "nstate.failed": "失败", "nstate.cancelled": "已停止", "nstate.summarized": "已汇总",
      "nevent.raised": "告警", "nevent.cleared": "解除", "nevent.escalated": "升级",
      "nevent.acknowledged": "已接手", "nevent.summary": "汇总", "stats.notify": "通知投递", "stats.failed": "失败",
      "ev.battery_pct": "电量", "ev.strap": "腕带状态", "ev.last_rx_ms": "最后通信",
      "ev.last_fix_rx_ms": "最后定位", "ev.devices": "涉及设备", "ev.peer_device_id": "另一设备",
      "ev.person_id": "被保护人", "ev.peer_subject_id": "接触对象",
      "strap.open": "已打开", "strap.ok": "正常",
      "zkind.polygon": "多边形", "zkind.circle": "圆形",
      "src.adcode": "行政区划", "src.drawn": "地图绘制", "src.upload": "上传", "src.import": "导入",
      "enrol.title": "登记监管对象", "enrol.subject_id": "对象编号", "enrol.name": "姓名",
      "enrol.region": "辖区", "enrol.level": "管理等级", "enrol.officer": "责任民警（默认本人）",
      "enrol.note": "备注", "enrol.device": "设备编号", "enrol.kind": "设备类型",
      "enrol.inclusion": "活动范围（准入区域）", "enrol.exclusion": "禁入区域",
      "enrol.submit": "登记", "enrol.cancel": "取消",
      "subject.devices": "设备", "subject.zones": "区域", "subject.leaves": "请假",
      "subject.curfews": "宵禁", "subject.alarms": "告警", "subject.back": "返回列表",
      "tab.protected": "被保护人", "subject.contacts": "禁止接触对象",
      "contacts.ids": "对象编号（逗号分隔）", "contacts.reason": "依据", "contacts.save": "保存",
      "contacts.none": "无",
      "protected.title": "被保护人（仅主管可见）", "protected.add": "登记被保护人",
      "protected.person": "编号", "protected.name": "姓名", "protected.devices": "设备编号（逗号分隔）",
      "protected.from": "防范对象（逗号分隔）", "protected.note": "保护令", "protected.end": "解除保护",
      "protected.end_reason": "解除原因", "protected.none": "没有被保护人。",
      "col.protected_from": "防范对象", "col.devices": "设备",
      "subject.end": "解除监管", "subject.end_confirm": "确认解除监管？", "subject.inclusion": "准入",
      "subject.exclusion": "禁入", "subject.return_device": "收回", "subject.issue": "发放设备",
      "subject.suspend": "暂停告警", "subject.no_alarms": "无告警。",
      "leave.request": "申请请假", "leave.zones": "请假去向区域", "leave.start": "开始时间",
      "leave.end": "结束时间", "leave.reason": "事由", "leave.submit": "提交申请",
      "leave.approve": "批准", "leave.refuse": "驳回", "leave.return": "销假",
      "leave.queue_empty": "没有待审批的请假。", "leave.queue": "待审批的请假",
      "curfew.add": "添加宵禁", "curfew.start": "开始（当地时间）", "curfew.end": "结束",
      "curfew.zone": "须在区域", "suspend.type": "告警类型", "suspend.reason": "原因",
      "zones.library": "区域库", "zones.import": "按行政区划代码导入", "zones.adcode": "区划代码",
      "zones.import_btn": "导入", "zones.upload": "上传 GeoJSON", "zones.file": "文件",
      "zones.coord_sys": "坐标系", "zones.zone_id": "区域编号", "zones.name": "名称",
      "zones.upload_btn": "上传", "zones.circle": "圆形区域：在地图上点击圆心，输入半径",
      "zones.radius": "半径（米）", "zones.centre": "圆心", "zones.circle_btn": "保存圆形区域",
      "zones.click_first": "请先在地图上点击圆心。", "zones.saved": "已保存：",
      "msg.saved": "已保存。", "msg.choose": "请选择",
    },
    en: {
      "tab.subjects": "Subjects", "tab.leaves": "Leave approval", "tab.zones": "Zones",
      "lang.other": "中文",
      "subjects.search": "Search", "subjects.q": "name or id", "subjects.state": "State",
      "subjects.all": "all", "subjects.enrol": "Enrol a subject", "subjects.none": "No subjects match.",
      "col.id": "id", "col.name": "name", "col.region": "region", "col.level": "level",
      "col.officer": "officer", "col.state": "state", "col.subject": "subject",
      "col.zones": "zones", "col.start": "start", "col.end": "end", "col.reason": "reason",
      "col.requested_by": "requested by", "col.actions": "actions", "col.device": "device",
      "col.kind": "kind", "col.issued": "issued", "col.source": "source", "col.time": "time",
      "col.type": "type", "col.days": "days",
      "state.active": "active", "state.ended": "ended",
      "leave.requested": "requested", "leave.refused": "refused", "leave.approved": "approved",
      "leave.active": "on leave", "leave.returned": "returned", "leave.ended": "ended",
      "leave.overdue": "overdue", "leave.cancelled": "cancelled",
      "level.strict": "strict", "level.ordinary": "ordinary", "level.lenient": "lenient",
      "kind.bracelet": "bracelet", "kind.phone": "phone",
      "kind.victim": "protected person's device",
      "atype.outbound": "outbound", "atype.exclusion": "exclusion", "atype.offline": "offline",
      "atype.tamper": "strap tamper", "atype.low_battery": "low battery", "atype.leave_overdue": "leave overdue",
      "atype.curfew": "curfew", "atype.separation": "separation", "atype.no_fix": "no fix",
      "atype.power_off": "power off", "atype.approach": "approach", "atype.proximity": "victim proximity",
      "atype.contact": "prohibited contact", "atype.warning": "warning",
      "notify.title": "Notifications", "notify.none": "No notification sent.", "notify.time": "time",
      "notify.channel": "channel", "notify.recipient": "recipient", "notify.level": "level",
      "notify.state": "state", "notify.attempts": "attempts", "notify.error": "last error",
      "nchan.webhook": "webhook", "nchan.email": "e-mail", "nchan.sms": "SMS",
      "nstate.sent": "sent", "nstate.pending": "pending", "nstate.retrying": "retrying",
      "nstate.failed": "failed", "nstate.cancelled": "stopped", "nstate.summarized": "in a summary",
      "nevent.raised": "raised", "nevent.cleared": "cleared", "nevent.escalated": "escalated",
      "nevent.acknowledged": "taken over", "nevent.summary": "summary", "stats.notify": "Notification delivery", "stats.failed": "failed",
      "ev.battery_pct": "battery", "ev.strap": "strap", "ev.last_rx_ms": "last heard",
      "ev.last_fix_rx_ms": "last fix", "ev.devices": "devices", "ev.peer_device_id": "other device",
      "ev.person_id": "protected person", "ev.peer_subject_id": "other subject",
      "strap.open": "open", "strap.ok": "closed",
      "zkind.polygon": "polygon", "zkind.circle": "circle",
      "src.adcode": "county", "src.drawn": "drawn", "src.upload": "upload", "src.import": "import",
      "enrol.title": "Enrol a subject", "enrol.subject_id": "Subject id", "enrol.name": "Name",
      "enrol.region": "Region", "enrol.level": "Level", "enrol.officer": "Officer (default: you)",
      "enrol.note": "Note", "enrol.device": "Device id", "enrol.kind": "Device kind",
      "enrol.inclusion": "Inclusion zones", "enrol.exclusion": "Exclusion zones",
      "enrol.submit": "Enrol", "enrol.cancel": "Cancel",
      "subject.devices": "Devices", "subject.zones": "Zones", "subject.leaves": "Leave",
      "subject.curfews": "Curfews", "subject.alarms": "Alarms", "subject.back": "Back to the list",
      "tab.protected": "Protected persons", "subject.contacts": "Prohibited contacts",
      "contacts.ids": "Subject ids (comma-separated)", "contacts.reason": "Grounds", "contacts.save": "Save",
      "contacts.none": "none",
      "protected.title": "Protected persons (supervisors only)", "protected.add": "Enrol a protected person",
      "protected.person": "Id", "protected.name": "Name", "protected.devices": "Device ids (comma-separated)",
      "protected.from": "Protected from (comma-separated)", "protected.note": "Protection order",
      "protected.end": "End protection", "protected.end_reason": "Reason", "protected.none": "No protected persons.",
      "col.protected_from": "Protected from", "col.devices": "Devices",
      "subject.end": "End supervision", "subject.end_confirm": "End this subject's supervision?",
      "subject.inclusion": "inclusion", "subject.exclusion": "exclusion",
      "subject.return_device": "Return", "subject.issue": "Issue a device",
      "subject.suspend": "Suspend alarms", "subject.no_alarms": "No alarms.",
      "leave.request": "Request leave", "leave.zones": "Leave zones", "leave.start": "Start",
      "leave.end": "End", "leave.reason": "Reason", "leave.submit": "Request",
      "leave.approve": "Approve", "leave.refuse": "Refuse", "leave.return": "Register return",
      "leave.queue_empty": "No leave waits for approval.", "leave.queue": "Leave awaiting approval",
      "curfew.add": "Add a curfew", "curfew.start": "Start (local time)", "curfew.end": "End",
      "curfew.zone": "Inside zone", "suspend.type": "Alarm type", "suspend.reason": "Reason",
      "zones.library": "Zone library", "zones.import": "Import a county by adcode",
      "zones.adcode": "adcode", "zones.import_btn": "Import", "zones.upload": "Upload GeoJSON",
      "zones.file": "File", "zones.coord_sys": "Datum", "zones.zone_id": "Zone id",
      "zones.name": "Name", "zones.upload_btn": "Upload",
      "zones.circle": "Circle: click the centre on the map, type the radius",
      "zones.radius": "Radius (m)", "zones.centre": "Centre", "zones.circle_btn": "Save the circle",
      "zones.click_first": "Click the centre on the map first.", "zones.saved": "Saved: ",
      "msg.saved": "Saved.", "msg.choose": "choose",
    },
  };
  const KEY = "emfence.lang";

  function initial() {
    try {
      const kept = localStorage.getItem(KEY);
      if (kept === "zh" || kept === "en") return kept;
    } catch (e) { /* storage refused: choose by the browser */ }
    const first = (navigator.languages && navigator.languages[0]) || navigator.language || "zh";
    return first.toLowerCase().startsWith("en") ? "en" : "zh";
  }
  let lang = initial();

  const t = (key) => STRINGS[lang][key] || STRINGS.en[key] || key;
  // A word of the register's vocabulary ("leave.overdue"), or the bare value.
  const term = (group, value) => {
    const key = `${group}.${value}`;
    return STRINGS[lang][key] || String(value === null || value === undefined ? "–" : value);
  };
  function toggle() {
    lang = lang === "zh" ? "en" : "zh";
    try { localStorage.setItem(KEY, lang); } catch (e) { /* this visit only */ }
    return lang;
  }
  return { t, term, toggle, lang: () => lang };
})();
