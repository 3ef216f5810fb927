// English and Russian, chosen from the browser's languages. Messages are keyed by their English
// text (as the desktop client's gettext catalogues are); plurals follow each language's rules
// (Intl.PluralRules: Russian has one, few and many).

export type Language = "en" | "ru";

type Plural = Partial<Record<Intl.LDMLPluralRule, string>>;

const RU: Record<string, string | Plural> = {
  "Sign in": "Войти",
  "Create account": "Создать учётную запись",
  Username: "Имя пользователя",
  Password: "Пароль",
  "Keep me signed in on this device": "Не выходить на этом устройстве",
  "Sign out": "Выйти",
  General: "Общий",
  Channels: "Каналы",
  "Direct messages": "Личные сообщения",
  People: "Люди",
  "Search people": "Поиск людей",
  "More…": "Ещё…",
  "New channel": "Новый канал",
  "Browse channels": "Все каналы",
  "New group": "Новая группа",
  Group: "Группа",
  Members: "Участники",
  "Channel settings": "Настройки канала",
  "Write a message…": "Напишите сообщение…",
  Send: "Отправить",
  "sending…": "отправляется…",
  "waiting for connection…": "ждёт соединения…",
  "not sent: {reason}": "не отправлено: {reason}",
  Retry: "Повторить",
  "New messages": "Новые сообщения",
  "Jump to latest ↓": "К последним ↓",
  "{n} new messages ↓": {
    one: "{n} новое сообщение ↓",
    few: "{n} новых сообщения ↓",
    many: "{n} новых сообщений ↓",
    other: "{n} новых сообщения ↓",
  },
  "{name} is typing…": "{name} печатает…",
  "{first} and {second} are typing…": "{first} и {second} печатают…",
  "Several people are typing…": "Несколько человек печатают…",
  online: "в сети",
  offline: "не в сети",
  "everyone on this server": "все на этом сервере",
  "{n} members": {
    one: "{n} участник",
    few: "{n} участника",
    many: "{n} участников",
    other: "{n} участника",
  },
  Connecting: "Соединение…",
  "Reconnecting in {n} seconds…": {
    one: "Переподключение через {n} секунду…",
    few: "Переподключение через {n} секунды…",
    many: "Переподключение через {n} секунд…",
    other: "Переподключение через {n} секунды…",
  },
  "Reconnecting…": "Переподключение…",
  "{n} messages wait to be sent.": {
    one: "{n} сообщение ждёт отправки.",
    few: "{n} сообщения ждут отправки.",
    many: "{n} сообщений ждут отправки.",
    other: "{n} сообщения ждут отправки.",
  },
  Offline: "Нет соединения",
  "Wrong username or password.": "Неверное имя пользователя или пароль.",
  "The name “{name}” is taken. Choose another, or sign in.":
    "Имя «{name}» занято. Выберите другое или войдите.",
  "A username has 1 to 32 letters (of one alphabet), digits, “_”, “-” or “.”.":
    "Имя пользователя — от 1 до 32 букв (одного алфавита), цифр, «_», «-» или «.».",
  "A password has 8 to 256 characters.": "Пароль — от 8 до 256 символов.",
  "Too many attempts. Try again in {n} seconds.": {
    one: "Слишком много попыток. Попробуйте через {n} секунду.",
    few: "Слишком много попыток. Попробуйте через {n} секунды.",
    many: "Слишком много попыток. Попробуйте через {n} секунд.",
    other: "Слишком много попыток. Попробуйте через {n} секунды.",
  },
  "Cannot reach the server. Is it running?": "Сервер недоступен. Он запущен?",
  "Your session has ended. Sign in again.": "Сеанс завершён. Войдите снова.",
  "The server refused: {reason}": "Сервер отказал: {reason}",
  "A message may have at most {limit} characters; this one has {n}.":
    "В сообщении может быть не больше {limit} символов; в этом {n}.",
  "This channel is archived: it is read-only.": "Канал в архиве: только для чтения.",
  archived: "в архиве",
  Name: "Название",
  Topic: "Тема",
  "Public: anyone may find and join it": "Открытый: любой может найти и вступить",
  Create: "Создать",
  Cancel: "Отмена",
  Close: "Закрыть",
  Save: "Сохранить",
  Join: "Вступить",
  joined: "вы участник",
  "Search channels": "Поиск каналов",
  "People (comma-separated names)": "Люди (имена через запятую)",
  Invite: "Пригласить",
  Remove: "Удалить",
  Leave: "Покинуть",
  Archive: "В архив",
  "Archive this channel? Nobody will be able to post in it.":
    "Отправить канал в архив? Писать в него больше будет нельзя.",
  owner: "владелец",
  admin: "администратор",
  member: "участник",
  "Make {role}": "Сделать: {role}",
  "Go to…": "Перейти…",
  "Conversation or person": "Беседа или человек",
  "Enable notifications": "Включить уведомления",
  Back: "Назад",
  "{who} created the conversation": "{who} создаёт беседу",
  "{who} joined": "{who} вступает",
  "{who} left": "{who} уходит",
  "{who} added {target}": "{who} добавляет {target}",
  "{who} removed {target}": "{who} удаляет {target}",
  "{who} renamed the channel to {name}": "{who} переименовывает канал в {name}",
  "{who} set the topic: {topic}": "{who} меняет тему: {topic}",
  "{who} archived the channel": "{who} отправляет канал в архив",
  "{who} made {target} {role}": "{who} назначает {target}: {role}",
  "{user} — beseda": "{user} — beseda",
  "({n}) {user} — beseda": "({n}) {user} — beseda",
  "{sender} mentioned you": "{sender} упоминает вас",
  "{sender} wrote to you": "{sender} пишет вам",
  "Sign in to beseda": "Вход в beseda",
  "Load older messages": "Загрузить более ранние",
  you: "вы",
  "Search messages": "Поиск сообщений",
  Today: "Сегодня",
  Yesterday: "Вчера",
  "(edited)": "(изменено)",
  "Message actions": "Действия с сообщением",
  "deleted message": "удалённое сообщение",
  "Reply to {sender}": "Ответ на сообщение {sender}",
  "Editing message": "Изменение сообщения",
  React: "Реакция",
  Reply: "Ответить",
  Edit: "Изменить",
  Delete: "Удалить",
  "Copy text": "Копировать текст",
  "Delete this message?": "Удалить это сообщение?",
  "It is deleted for everyone, and cannot be brought back.":
    "Оно удалится у всех, и вернуть его будет нельзя.",
  "Nothing found.": "Ничего не найдено.",
  "That message is no longer there.": "Этого сообщения больше нет.",
  "Insert emoji": "Вставить эмодзи",
  Emoji: "Эмодзи",
  "You: {text}": "Вы: {text}",
};

/** The first of the browser's languages that we have; English otherwise. */
export function chooseLanguage(preferred: readonly string[]): Language {
  for (const tag of preferred) {
    const base = tag.toLowerCase().split("-")[0];
    if (base === "ru") return "ru";
    if (base === "en") return "en";
  }
  return "en";
}

export class Translator {
  private readonly plurals: Intl.PluralRules;

  constructor(readonly language: Language) {
    this.plurals = new Intl.PluralRules(language);
  }

  /** The text of `key` in this language, `{name}` placeholders filled from `values`. */
  t(key: string, values: Record<string, string | number> = {}): string {
    const found = this.language === "ru" ? RU[key] : undefined;
    let text: string;
    if (found === undefined) {
      text = typeof values.n === "number" && values.n === 1 ? singular(key) : key;
    } else if (typeof found === "string") {
      text = found;
    } else {
      const n = typeof values.n === "number" ? values.n : 0;
      text = found[this.plurals.select(n)] ?? found.other ?? key;
    }
    return text.replace(/\{(\w+)\}/g, (whole, name: string) => {
      const value = values[name];
      return value === undefined ? whole : String(value);
    });
  }
}

// English singulars of the plural keys above.
const SINGULAR: Record<string, string> = {
  "{n} new messages ↓": "{n} new message ↓",
  "{n} members": "{n} member",
  "Reconnecting in {n} seconds…": "Reconnecting in {n} second…",
  "{n} messages wait to be sent.": "{n} message waits to be sent.",
  "Too many attempts. Try again in {n} seconds.": "Too many attempts. Try again in {n} second.",
};

function singular(key: string): string {
  return SINGULAR[key] ?? key;
}

/** Every key that has a Russian text (for the test that the catalogue is complete). */
export function russianKeys(): string[] {
  return Object.keys(RU);
}
