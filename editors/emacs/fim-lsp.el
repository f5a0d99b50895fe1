;;; fim-lsp.el --- Local AI code completion from the fim-lsp language server  -*- lexical-binding: t; -*-

;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1"))
;; Keywords: convenience, languages, tools
;; SPDX-License-Identifier: Apache-2.0

;;; Commentary:

;; fim-lsp is a local language server that suggests code with the FIM-NeoX-1.3B
;; fill-in-the-middle model.  This file connects it to Emacs:
;;
;; - It registers the server with eglot (`eglot-server-programs') and with
;;   lsp-mode (an add-on client, so it runs beside your usual server), so its
;;   suggestion appears in `completion-at-point' (and company, corfu, ...).
;;
;; - `fim-lsp-inline-mode' shows the suggestion as ghost text after a pause in
;;   typing (`textDocument/inlineCompletion'), accepted with TAB, word by word
;;   with M-f, line by line with C-e.  It works over eglot and over lsp-mode.
;;
;; Setup:
;;
;;   (add-to-list 'load-path "/path/to/fim-lsp/editors/emacs")
;;   (require 'fim-lsp)
;;   (setq fim-lsp-settings '(:model "/models/fim-neox-1.3b" :device "cuda"))
;;   (add-hook 'python-mode-hook #'eglot-ensure)      ; or #'lsp
;;   (add-hook 'eglot-managed-mode-hook #'fim-lsp-inline-mode)
;;
;; Everything about what to suggest lives in the server; this file only starts
;; it, passes `fim-lsp-settings' along and draws the answer.

;;; Code:

(require 'cl-lib)
(require 'seq)
(require 'subr-x)

(declare-function eglot-current-server "eglot")
(declare-function eglot--capabilities "eglot")
(declare-function eglot--TextDocumentIdentifier "eglot")
(declare-function eglot--pos-to-lsp-position "eglot")
(declare-function eglot--lsp-position-to-point "eglot")
(declare-function eglot--signal-textDocument/didChange "eglot")
(declare-function jsonrpc-async-request "jsonrpc")
(declare-function jsonrpc-notify "jsonrpc")
(declare-function lsp-register-client "lsp-mode")
(declare-function make-lsp-client "lsp-mode")
(declare-function lsp-stdio-connection "lsp-mode")
(declare-function lsp-workspaces "lsp-mode")
(declare-function lsp--workspace-client "lsp-mode")
(declare-function lsp--client-server-id "lsp-mode")
(declare-function lsp-request-async "lsp-mode")
(declare-function lsp-notify "lsp-mode")
(declare-function lsp--text-document-identifier "lsp-mode")
(declare-function lsp--cur-position "lsp-mode")
(declare-function lsp--position-to-point "lsp-mode")
(defvar eglot-server-programs)
(defvar eglot--managed-mode)
(defvar lsp-mode)
(defvar lsp--cur-workspace)

(defgroup fim-lsp nil
  "Local AI code completion from the fim-lsp language server."
  :group 'tools
  :prefix "fim-lsp-")

(defcustom fim-lsp-command '("fim-lsp" "serve")
  "Command that starts the server: program and arguments.
The program is found on `exec-path' or given as an absolute file name."
  :type '(repeat string))

(defcustom fim-lsp-modes
  '(python-mode python-ts-mode js-mode js-ts-mode typescript-mode typescript-ts-mode
    tsx-ts-mode c-mode c-ts-mode c++-mode c++-ts-mode java-mode java-ts-mode go-mode
    go-ts-mode rust-mode rust-ts-mode ruby-mode ruby-ts-mode sh-mode bash-ts-mode
    lua-mode php-mode css-mode html-mode json-mode yaml-mode)
  "Major modes (and modes derived from them) whose buffers the server serves.
Set it before loading this file, or call `fim-lsp-register' again after."
  :type '(repeat symbol))

(defcustom fim-lsp-settings nil
  "Server settings, a plist with the server's camelCase keys.
For example (:model \"/models/fim-neox-1.3b\" :device \"cuda\" :quantization \"int8\"
:maxNewTokens 64 :multiline \"auto\" :contextLength 2048 :temperature 0).
Sent as initializationOptions; `fim-lsp-update-settings' sends a change to
running servers (a new model, device or quantization reloads the model).
The keys are the options in the Options table of fim-lsp's README.md."
  :type '(plist :key-type symbol :value-type sexp)
  :set (lambda (symbol value)
         (set-default symbol value)
         (when (fboundp 'fim-lsp-update-settings)
           (fim-lsp-update-settings))))

(defcustom fim-lsp-idle-delay 0.15
  "Seconds of pause in typing before `fim-lsp-inline-mode' asks for a suggestion."
  :type 'number)

(defface fim-lsp-suggestion-face
  '((t :inherit shadow))
  "Face of the ghost text that `fim-lsp-inline-mode' shows.")

;;;; Registration with eglot and lsp-mode

(defun fim-lsp--language-id (mode)
  "The LSP language id for major MODE."
  (let ((name (replace-regexp-in-string "\\(-ts\\)?-mode\\'" "" (symbol-name mode))))
    (pcase name
      ("c++" "cpp")
      ("js" "javascript")
      ("tsx" "typescriptreact")
      ((or "sh" "bash") "shellscript")
      (_ name))))

(defun fim-lsp--eglot-contact (&optional _interactive)
  "The eglot contact: `fim-lsp-command' and `fim-lsp-settings'."
  (if fim-lsp-settings
      (append fim-lsp-command (list :initializationOptions fim-lsp-settings))
    fim-lsp-command))

(defun fim-lsp--eglot-entry ()
  "The `eglot-server-programs' entry for `fim-lsp-modes'."
  (cons (mapcar (lambda (mode) (list mode :language-id (fim-lsp--language-id mode)))
                fim-lsp-modes)
        #'fim-lsp--eglot-contact))

(defun fim-lsp--eglot-register ()
  "Put fim-lsp first in `eglot-server-programs' for `fim-lsp-modes'.
Eglot runs one server per buffer: in these modes it becomes fim-lsp."
  (setq eglot-server-programs
        (cons (fim-lsp--eglot-entry)
              (seq-remove (lambda (entry) (eq (cdr entry) #'fim-lsp--eglot-contact))
                          eglot-server-programs))))

(defun fim-lsp--lsp-mode-register ()
  "Register fim-lsp as an lsp-mode add-on client (it runs beside the usual server)."
  (lsp-register-client
   (make-lsp-client
    :new-connection (lsp-stdio-connection (lambda () fim-lsp-command))
    :activation-fn (lambda (_file-name mode)
                     (apply #'provided-mode-derived-p mode fim-lsp-modes))
    :language-id (lambda (buffer) (fim-lsp--language-id (buffer-local-value 'major-mode buffer)))
    :initialization-options (lambda () (or fim-lsp-settings (make-hash-table)))
    :add-on? t
    :priority -1
    :server-id 'fim-lsp)))

;;;###autoload
(defun fim-lsp-register ()
  "Register fim-lsp with eglot and lsp-mode (each once it is loaded)."
  (interactive)
  (with-eval-after-load 'eglot (fim-lsp--eglot-register))
  (with-eval-after-load 'lsp-mode (fim-lsp--lsp-mode-register)))

(fim-lsp-register)

;;;; Talking to the server through eglot or lsp-mode

(defun fim-lsp--eglot-server ()
  "The eglot server of this buffer, if it is fim-lsp."
  (when-let ((server (and (bound-and-true-p eglot--managed-mode) (eglot-current-server))))
    ;; `plist-member': the options object is often empty, which reads as nil.
    (when (plist-member (eglot--capabilities server) :inlineCompletionProvider)
      server)))

(defun fim-lsp--lsp-workspace ()
  "The lsp-mode workspace of fim-lsp in this buffer, if there is one."
  (when (bound-and-true-p lsp-mode)
    (seq-find (lambda (workspace)
                (eq (lsp--client-server-id (lsp--workspace-client workspace)) 'fim-lsp))
              (lsp-workspaces))))

(defun fim-lsp--get (object key)
  "KEY (a camelCase string) of a JSON OBJECT.
OBJECT is a plist (eglot) or a hash table (lsp-mode)."
  (cond ((hash-table-p object) (gethash key object))
        ((and (listp object) (keywordp (car-safe object)))
         (plist-get object (intern (concat ":" key))))))

(defun fim-lsp-update-settings ()
  "Send `fim-lsp-settings' to the running fim-lsp servers.
This is a workspace/didChangeConfiguration notification."
  (interactive)
  (let ((params (list :settings (list :fimLsp (or fim-lsp-settings (make-hash-table))))))
    (dolist (buffer (buffer-list))
      (with-current-buffer buffer
        (cond ((fim-lsp--eglot-server)
               (jsonrpc-notify (fim-lsp--eglot-server) :workspace/didChangeConfiguration params))
              ((fim-lsp--lsp-workspace)
               (let ((lsp--cur-workspace (fim-lsp--lsp-workspace)))
                 (lsp-notify "workspace/didChangeConfiguration" params))))))))

;;;; Inline suggestions (ghost text)

(defvar-local fim-lsp-inline--overlay nil "The overlay that shows the ghost text.")
(defvar-local fim-lsp-inline--suggestion nil
  "The suggestion shown: (POINT TEXT END).
TEXT is inserted at POINT, replacing the text up to END.")
(defvar-local fim-lsp-inline--showing nil "Non-nil while ghost text is shown (activates the keys).")
(defvar-local fim-lsp-inline--timer nil)
(defvar-local fim-lsp-inline--generation 0 "Counts requests; an answer to an older one is dropped.")
(defvar-local fim-lsp-inline--last-tick nil)
(defvar-local fim-lsp-inline--pending nil "The eglot request in flight, for $/cancelRequest.")

(defvar fim-lsp-inline-active-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "TAB") #'fim-lsp-inline-accept)
    (define-key map (kbd "<tab>") #'fim-lsp-inline-accept)
    (define-key map (kbd "M-f") #'fim-lsp-inline-accept-word)
    (define-key map (kbd "M-<right>") #'fim-lsp-inline-accept-word)
    (define-key map (kbd "C-e") #'fim-lsp-inline-accept-line)
    (define-key map (kbd "C-M-<right>") #'fim-lsp-inline-accept-line)
    map)
  "Keys active while ghost text is shown.  Any other command dismisses it.")

(defvar fim-lsp-inline--emulation-alist
  `((fim-lsp-inline--showing . ,fim-lsp-inline-active-map)))

(defvar fim-lsp-inline-mode-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "M-\\") #'fim-lsp-inline-suggest)
    map)
  "Keys of `fim-lsp-inline-mode'.")

(defconst fim-lsp-inline--own-commands
  '(fim-lsp-inline-accept fim-lsp-inline-accept-word fim-lsp-inline-accept-line
    fim-lsp-inline-suggest))

;;;###autoload
(define-minor-mode fim-lsp-inline-mode
  "Show fim-lsp's suggestion as ghost text after a pause in typing.
\\<fim-lsp-inline-active-map>\\[fim-lsp-inline-accept] accepts it, \
\\[fim-lsp-inline-accept-word] its next word, \\[fim-lsp-inline-accept-line] its next line;
any other command dismisses it.  Needs fim-lsp running in the buffer
through eglot or lsp-mode."
  :lighter " FIM"
  :keymap fim-lsp-inline-mode-map
  (if fim-lsp-inline-mode
      (progn
        (add-to-list 'emulation-mode-map-alists 'fim-lsp-inline--emulation-alist)
        (add-hook 'post-command-hook #'fim-lsp-inline--post-command nil t)
        (setq fim-lsp-inline--last-tick (buffer-chars-modified-tick)))
    (remove-hook 'post-command-hook #'fim-lsp-inline--post-command t)
    (fim-lsp-inline-dismiss)))

(defun fim-lsp-inline--clear ()
  "Remove the ghost text and forget the suggestion."
  (when (overlayp fim-lsp-inline--overlay)
    (delete-overlay fim-lsp-inline--overlay))
  (setq fim-lsp-inline--overlay nil
        fim-lsp-inline--suggestion nil
        fim-lsp-inline--showing nil))

(defun fim-lsp-inline-dismiss ()
  "Hide the suggestion and drop any request in flight."
  (interactive)
  (when (timerp fim-lsp-inline--timer)
    (cancel-timer fim-lsp-inline--timer))
  (cl-incf fim-lsp-inline--generation)
  (fim-lsp-inline--cancel-pending)
  (fim-lsp-inline--clear))

(defun fim-lsp-inline--cancel-pending ()
  "Tell the server that the request in flight is no longer wanted."
  (when fim-lsp-inline--pending
    (pcase-let ((`(,server . ,id) fim-lsp-inline--pending))
      (ignore-errors (jsonrpc-notify server :$/cancelRequest (list :id id))))
    (setq fim-lsp-inline--pending nil)))

(defun fim-lsp-inline--show (point text end)
  "Show TEXT as ghost text at POINT; accepting it replaces POINT..END."
  (fim-lsp-inline--clear)
  (let ((ghost (propertize text 'face 'fim-lsp-suggestion-face))
        (overlay (make-overlay point point nil nil t)))
    ;; Keep the cursor before the ghost text, not after it.
    (put-text-property 0 1 'cursor t ghost)
    (overlay-put overlay 'after-string ghost)
    (overlay-put overlay 'fim-lsp-text text)
    (overlay-put overlay 'priority 100)
    (setq fim-lsp-inline--overlay overlay
          fim-lsp-inline--suggestion (list point text (max end point))
          fim-lsp-inline--showing t)))

(defun fim-lsp-inline-current ()
  "The text of the suggestion shown, or nil."
  (nth 1 fim-lsp-inline--suggestion))

(defun fim-lsp-inline--items (result)
  "The items of an inlineCompletion RESULT (a list or an InlineCompletionList)."
  (let ((items (if (or (hash-table-p result) (keywordp (car-safe result)))
                   (fim-lsp--get result "items")
                 result)))
    (append items nil)))

(defun fim-lsp-inline--handle (buffer generation tick point result to-point)
  "Show the first usable item of RESULT if BUFFER is as it was.
GENERATION, TICK and POINT are what they were at the request.
TO-POINT turns an LSP Position into a buffer position."
  (when (buffer-live-p buffer)
    (with-current-buffer buffer
      (when (and fim-lsp-inline-mode
                 (= generation fim-lsp-inline--generation)
                 (= tick (buffer-chars-modified-tick))
                 (= point (point)))
        (setq fim-lsp-inline--pending nil)
        (cl-loop
         for item in (fim-lsp-inline--items result)
         for text = (let ((insert (fim-lsp--get item "insertText")))
                      (if (stringp insert) insert (fim-lsp--get insert "value")))
         for range = (fim-lsp--get item "range")
         for start = (if range (funcall to-point (fim-lsp--get range "start")) point)
         for end = (if range (funcall to-point (fim-lsp--get range "end")) point)
         ;; The range may start before point (what was typed); it must not end before it.
         for typed = (and (<= start point) (<= point end)
                          (= (line-number-at-pos start) (line-number-at-pos point))
                          (buffer-substring-no-properties start point))
         when (and (stringp text) typed (string-prefix-p typed text)
                   (> (length text) (length typed)))
         return (fim-lsp-inline--show point (substring text (length typed)) end))))))

(defun fim-lsp-inline--request (invoked)
  "Ask the server for a suggestion at point; INVOKED means the user asked."
  (cl-incf fim-lsp-inline--generation)
  (fim-lsp-inline--cancel-pending)
  (let* ((buffer (current-buffer))
         (generation fim-lsp-inline--generation)
         (tick (buffer-chars-modified-tick))
         (point (point))
         (context (list :triggerKind (if invoked 1 2)))
         (handle (lambda (to-point)
                   (lambda (result)
                     (fim-lsp-inline--handle buffer generation tick point result to-point)))))
    (cond
     ((fim-lsp--eglot-server)
      (let ((server (fim-lsp--eglot-server)))
        (eglot--signal-textDocument/didChange)
        (let ((id (car (jsonrpc-async-request
                        server :textDocument/inlineCompletion
                        (list :textDocument (eglot--TextDocumentIdentifier)
                              :position (eglot--pos-to-lsp-position)
                              :context context)
                        :success-fn (funcall handle #'eglot--lsp-position-to-point)
                        :error-fn #'ignore
                        :timeout-fn #'ignore))))
          (setq fim-lsp-inline--pending (cons server id)))))
     ((fim-lsp--lsp-workspace)
      ;; lsp-mode's own position functions, so that columns count as in its didChange
      ;; (lsp-mode 8 counts code points whatever the negotiated encoding).
      (let ((lsp--cur-workspace (fim-lsp--lsp-workspace)))
        (lsp-request-async "textDocument/inlineCompletion"
                           (list :textDocument (lsp--text-document-identifier)
                                 :position (lsp--cur-position)
                                 :context context)
                           (funcall handle #'lsp--position-to-point)
                           :mode 'tick
                           :error-handler #'ignore
                           :cancel-token :fim-lsp-inline))))))

(defun fim-lsp-inline-suggest ()
  "Ask for a suggestion at point now."
  (interactive)
  (fim-lsp-inline--clear)
  (fim-lsp-inline--request t))

(defun fim-lsp-inline--schedule ()
  "Ask for a suggestion after `fim-lsp-idle-delay' seconds without a command."
  (when (timerp fim-lsp-inline--timer)
    (cancel-timer fim-lsp-inline--timer))
  (setq fim-lsp-inline--timer
        (run-with-timer fim-lsp-idle-delay nil #'fim-lsp-inline--timer-fired (current-buffer))))

(defun fim-lsp-inline--timer-fired (buffer)
  "Ask for a suggestion in BUFFER if it is still the one being edited."
  (when (and (buffer-live-p buffer) (eq buffer (window-buffer (selected-window))))
    (with-current-buffer buffer
      (when fim-lsp-inline-mode
        (fim-lsp-inline--request nil)))))

(defun fim-lsp-inline--typed-ahead ()
  "If the last command typed the suggestion's next characters, keep the rest shown."
  (pcase-let ((`(,start ,text ,end) fim-lsp-inline--suggestion))
    (when (and (> (point) start) (<= (point) (point-max)))
      (let ((typed (buffer-substring-no-properties start (point))))
        (when (and (string-prefix-p typed text) (< (length typed) (length text)))
          (fim-lsp-inline--show (point) (substring text (length typed))
                                (+ end (length typed)))
          t)))))

(defun fim-lsp-inline--post-command ()
  "Keep, dismiss or ask again after each command.
The suggestion stays while neither the text nor point changed (scrolling,
\\[execute-extended-command] ...), except after \\[keyboard-quit]; it
follows characters typed as suggested; anything else dismisses it, and an
edit asks anew."
  (unless (memq this-command fim-lsp-inline--own-commands)
    (let ((changed (/= (buffer-chars-modified-tick) (or fim-lsp-inline--last-tick 0))))
      (cond
       ((and (not changed) fim-lsp-inline--suggestion
             (= (point) (car fim-lsp-inline--suggestion))
             (not (eq this-command 'keyboard-quit))))
       ((and changed fim-lsp-inline--suggestion (fim-lsp-inline--typed-ahead)))
       (t (fim-lsp-inline-dismiss)
          (when changed
            (fim-lsp-inline--schedule))))))
  (setq fim-lsp-inline--last-tick (buffer-chars-modified-tick)))

(defun fim-lsp-inline--partial (text kind)
  "The part of TEXT that accepting its next KIND (`word' or `line') inserts."
  (let ((regexps (if (eq kind 'line)
                     '("\\`\n[^\n]*" "\\`[^\n]*")
                   '("\\`\n[ \t]*" "\\`[ \t]*[[:alnum:]_]+" "\\`[ \t]*[^[:alnum:]_ \t\n]+"
                     "\\`[[:space:]]+"))))
    (or (cl-loop for regexp in regexps
                 when (and (string-match regexp text) (> (match-end 0) 0))
                 return (match-string 0 text))
        text)))

(defun fim-lsp-inline--accept (kind)
  "Insert the suggestion (KIND `all') or its next `word' or `line'."
  (pcase-let ((`(,start ,text ,end) fim-lsp-inline--suggestion))
    (when text
      (let ((part (if (eq kind 'all) text (fim-lsp-inline--partial text kind))))
        (fim-lsp-inline--clear)
        (goto-char start)
        (when (eq kind 'all)
          (delete-region start end))
        (insert part)
        (if (and (not (eq kind 'all)) (< (length part) (length text)))
            (fim-lsp-inline--show (point) (substring text (length part))
                                  (+ end (length part)))
          ;; After a full accept, offer what comes next.
          (fim-lsp-inline--schedule))
        (setq fim-lsp-inline--last-tick (buffer-chars-modified-tick))
        t))))

(defun fim-lsp-inline-accept ()
  "Insert the whole suggestion."
  (interactive)
  (fim-lsp-inline--accept 'all))

(defun fim-lsp-inline-accept-word ()
  "Insert the next word of the suggestion."
  (interactive)
  (fim-lsp-inline--accept 'word))

(defun fim-lsp-inline-accept-line ()
  "Insert the next line of the suggestion."
  (interactive)
  (fim-lsp-inline--accept 'line))

(provide 'fim-lsp)
;;; fim-lsp.el ends here
