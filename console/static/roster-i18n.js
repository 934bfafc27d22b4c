// emfence console: the words of the duty roster page, Chinese first, English available
// (the language is register-i18n.js's choice, toggled by the 中文/English button).
"use strict";

const rosterI18n = (() => {
  const STRINGS = {
    zh: {
      "tab.roster": "值班表", "title": "值班与告警升级", "none": "值班表中还没有人员。",
      "col.id": "编号", "col.name": "姓名", "col.region": "辖区", "col.role": "角色",
      "col.level": "通知级别", "col.phone": "手机", "col.email": "邮箱", "col.lang": "语言",
      "col.account": "系统账号", "col.shifts": "班次", "col.actions": "操作",
      "role.officer": "责任民警", "role.default_officer": "默认责任民警", "role.duty": "值班员",
      "role.squadron": "中队领导", "role.brigade": "大队/局",
      "lang.zh": "中文", "lang.en": "英文",
      "shifts.always": "全天候", "shifts.next_day": "（次日）",
      "shifts.hint": "每行一个班次，例如：mon,tue,wed,thu,fri 22:00-08:00（结束早于开始即跨午夜）",
      "form.title": "添加或修改人员", "form.note": "备注", "form.save": "保存", "form.clear": "清空",
      "edit": "修改", "delete": "删除", "delete.confirm": "确认从值班表中删除？",
      "told.title": "告警将通知谁", "told.region": "辖区", "told.at": "时间（默认现在）",
      "told.show": "查询", "told.level": "第 {n} 级", "told.nobody": "无人",
      "tz": "班次按当地时间：",
      "day.mon": "一", "day.tue": "二", "day.wed": "三", "day.thu": "四", "day.fri": "五",
      "day.sat": "六", "day.sun": "日", "days.prefix": "周",
    },
    en: {
      "tab.roster": "Duty roster", "title": "Duty roster and escalation", "none": "Nobody is on the roster yet.",
      "col.id": "id", "col.name": "name", "col.region": "region", "col.role": "role",
      "col.level": "level", "col.phone": "phone", "col.email": "e-mail", "col.lang": "language",
      "col.account": "account", "col.shifts": "shifts", "col.actions": "actions",
      "role.officer": "officer in charge", "role.default_officer": "default officer",
      "role.duty": "duty operator", "role.squadron": "squadron leader", "role.brigade": "brigade / bureau",
      "lang.zh": "Chinese", "lang.en": "English",
      "shifts.always": "always", "shifts.next_day": " (next day)",
      "shifts.hint": "one shift a line, e.g. mon,tue,wed,thu,fri 22:00-08:00 (an end before the start is overnight)",
      "form.title": "Add or change a person", "form.note": "Note", "form.save": "Save", "form.clear": "Clear",
      "edit": "Edit", "delete": "Delete", "delete.confirm": "Take this person off the roster?",
      "told.title": "Who an alarm reaches", "told.region": "Region", "told.at": "Time (default: now)",
      "told.show": "Show", "told.level": "Level {n}", "told.nobody": "nobody",
      "tz": "Shifts are in local time: ",
      "day.mon": "Mon", "day.tue": "Tue", "day.wed": "Wed", "day.thu": "Thu", "day.fri": "Fri",
      "day.sat": "Sat", "day.sun": "Sun", "days.prefix": "",
    },
  };
  const t = (key) => STRINGS[regI18n.lang()][key] || STRINGS.en[key] || key;
  return { t };
})();
